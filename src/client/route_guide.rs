//! The route guide client: the four `routeguide.RouteGuide` calls, each with
//! a deadline, and [`Client::run_demo`], which makes them the way grpc-go's
//! `examples/route_guide/client` does and reports one line per message.

use std::time::Duration;

use futures::prelude::*;
use grpcio::{CallOption, Channel, Metadata, WriteFlags};

use super::greet::call_option;
use super::settle;
use crate::proto::route_guide::{Feature, Point, Rectangle, RouteNote, RouteSummary};
use crate::proto::route_guide_grpc::RouteGuideClient;

/// Calls `routeguide.RouteGuide`.
#[derive(Clone)]
pub struct Client {
    stub: RouteGuideClient,
    /// Deadline of each call, from its start.
    timeout: Duration,
    /// Metadata sent with every call (e.g. `authorization`).
    headers: Option<Metadata>,
}

/// A rectangle from its two corners.
pub fn rectangle(lo: Point, hi: Point) -> Rectangle {
    Rectangle { lo: Some(lo).into(), hi: Some(hi).into(), ..Default::default() }
}

/// A point from E7 coordinates.
pub fn point(latitude: i32, longitude: i32) -> Point {
    Point { latitude, longitude, ..Default::default() }
}

/// A note at `(latitude, longitude)`.
pub fn note(latitude: i32, longitude: i32, message: &str) -> RouteNote {
    RouteNote { location: Some(point(latitude, longitude)).into(), message: message.to_string(), ..Default::default() }
}

/// The six notes grpc-go's client sends on RouteChat.
pub fn demo_notes() -> Vec<RouteNote> {
    vec![
        note(0, 1, "First message"),
        note(0, 2, "Second message"),
        note(0, 3, "Third message"),
        note(0, 1, "Fourth message"),
        note(0, 2, "Fifth message"),
        note(0, 3, "Sixth message"),
    ]
}

/// `count` points on whole degrees, like grpc-go's `randomPoint`, but from a
/// fixed seed so that every run records the same route.
pub fn demo_route(count: usize) -> Vec<Point> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |bound: u64| {
        // xorshift64: deterministic and good enough to spread points.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound) as i32
    };
    (0..count).map(|_| point((next(180) - 90) * 10_000_000, (next(360) - 180) * 10_000_000)).collect()
}

/// `Feature: name: "...", point:(lat, lng)`, as grpc-go's client logs it.
pub fn describe_feature(feature: &Feature) -> String {
    let at = feature.location.get_or_default();
    format!("Feature: name: {:?}, point:({}, {})", feature.name, at.latitude, at.longitude)
}

/// `Got message ... at point(lat, lng)`, as grpc-go's client logs it.
pub fn describe_note(note: &RouteNote) -> String {
    let at = note.location.get_or_default();
    format!("Got message {} at point({}, {})", note.message, at.latitude, at.longitude)
}

/// `Route summary: ...` with the four counters.
pub fn describe_summary(summary: &RouteSummary) -> String {
    format!(
        "Route summary: point_count:{} feature_count:{} distance:{} elapsed_time:{}",
        summary.point_count, summary.feature_count, summary.distance, summary.elapsed_time
    )
}

impl Client {
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Client { stub: RouteGuideClient::new(channel), timeout, headers: None }
    }

    /// Sends `headers` with every call, e.g. a bearer token's (`client::bearer_metadata`).
    pub fn with_headers(mut self, headers: Metadata) -> Self {
        self.headers = Some(headers);
        self
    }

    fn call_option(&self) -> CallOption {
        call_option(self.timeout, self.headers.as_ref())
    }

    /// GetFeature: the feature at `point` (an empty name if none is known).
    pub async fn get_feature(&self, point: &Point) -> grpcio::Result<Feature> {
        self.stub.get_feature_async_opt(point, self.call_option())?.await
    }

    /// ListFeatures: each feature inside `rect`, passed to `on_feature` as it arrives.
    pub async fn list_features(&self, rect: &Rectangle, mut on_feature: impl FnMut(Feature)) -> grpcio::Result<()> {
        let mut stream = self.stub.list_features_opt(rect, self.call_option())?;
        while let Some(feature) = stream.try_next().await? {
            on_feature(feature);
        }
        Ok(())
    }

    /// RecordRoute: sends the points, closes its side and returns the summary.
    pub async fn record_route(&self, points: &[Point]) -> grpcio::Result<RouteSummary> {
        let (mut sink, receiver) = self.stub.record_route_opt(self.call_option())?;
        let sent = async {
            for (i, point) in points.iter().enumerate() {
                let flags = WriteFlags::default().buffer_hint(i + 1 < points.len());
                sink.send((point.clone(), flags)).await?;
            }
            sink.close().await
        }
        .await;
        settle(sent, receiver.await)
    }

    /// RouteChat: sends the notes while receiving, concurrently, the notes
    /// the server sends back, each passed to `on_note` as it arrives.
    pub async fn route_chat(&self, notes: &[RouteNote], mut on_note: impl FnMut(RouteNote)) -> grpcio::Result<()> {
        let (mut sink, mut receiver) = self.stub.route_chat_opt(self.call_option())?;
        let send = async {
            for note in notes {
                sink.send((note.clone(), WriteFlags::default())).await?;
            }
            sink.close().await
        };
        let receive = async {
            while let Some(note) = receiver.try_next().await? {
                on_note(note);
            }
            Ok::<(), grpcio::Error>(())
        };
        let (sent, received) = future::join(send, receive).await;
        settle(sent, received)
    }

    /// What grpc-go's route_guide client does: GetFeature for a known and an
    /// unknown point, ListFeatures between (40, -75) and (42, -73),
    /// RecordRoute over ten points and RouteChat with the six demo notes.
    /// Each message received becomes one line for `print`.
    pub async fn run_demo(&self, mut print: impl FnMut(String)) -> grpcio::Result<()> {
        for at in [point(409_146_138, -746_188_906), point(0, 0)] {
            print(describe_feature(&self.get_feature(&at).await?));
        }
        let rect = rectangle(point(400_000_000, -750_000_000), point(420_000_000, -730_000_000));
        self.list_features(&rect, |f| print(describe_feature(&f))).await?;
        print(describe_summary(&self.record_route(&demo_route(10)).await?));
        self.route_chat(&demo_notes(), |n| print(describe_note(&n))).await
    }
}
