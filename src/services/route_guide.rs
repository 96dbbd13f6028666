//! `routeguide.RouteGuide`: the contract and the semantics of grpc-go's
//! `examples/route_guide` server, so that the official route_guide client
//! works against ours (and our `client route-guide` against theirs).
//!
//! Coordinates are in the E7 representation (degrees × 10^7) and distances
//! in metres, computed with the same haversine formula as grpc-go's server.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::prelude::*;
use grpcio::{RpcStatusCode, WriteFlags};
use serde_json::Value;

use crate::proto::route_guide::{Feature, Point, Rectangle, RouteNote, RouteSummary};
use crate::rpc::api::route_guide::RouteGuide;
use crate::rpc::{Call, CallError, DuplexSink, RequestStream, ServerStreamingSink};

/// Most notes RouteChat keeps, over all locations and calls; beyond it a
/// RouteChat call fails with RESOURCE_EXHAUSTED instead of growing memory
/// without bound.
pub const MAX_STORED_NOTES: usize = 100_000;
/// Most notes RouteChat keeps at one location. Each note is answered with
/// every note at its location, so this bounds the work one note costs (and
/// the time the notes' lock is held) whatever other peers send.
pub const MAX_NOTES_PER_LOCATION: usize = 100;

/// Earth's mean radius in metres, as grpc-go's server uses it.
const EARTH_RADIUS_M: f64 = 6_371_000.0;
/// E7 coordinates per degree.
const COORD_FACTOR: f64 = 1e7;

/// A point from E7 coordinates.
pub fn point(latitude: i32, longitude: i32) -> Point {
    Point { latitude, longitude, ..Default::default() }
}

/// The distance between two points in whole metres (truncated), by the
/// haversine formula with grpc-go's constants.
pub fn distance(p1: &Point, p2: &Point) -> i32 {
    let lat1 = (f64::from(p1.latitude) / COORD_FACTOR).to_radians();
    let lat2 = (f64::from(p2.latitude) / COORD_FACTOR).to_radians();
    let lng1 = (f64::from(p1.longitude) / COORD_FACTOR).to_radians();
    let lng2 = (f64::from(p2.longitude) / COORD_FACTOR).to_radians();
    let dlat = lat2 - lat1;
    let dlng = lng2 - lng1;
    let a = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlng / 2.0).sin().powi(2);
    let c = 2.0 * a.sqrt().atan2((1.0 - a).sqrt());
    // At most half the circumference (~20,015 km): always fits an i32.
    (EARTH_RADIUS_M * c) as i32
}

/// Whether `point` lies inside `rect`, edges included, whichever corners
/// `lo` and `hi` actually are.
pub fn in_range(point: &Point, rect: &Rectangle) -> bool {
    let (lo, hi) = (rect.lo.get_or_default(), rect.hi.get_or_default());
    let (left, right) = (lo.longitude.min(hi.longitude), lo.longitude.max(hi.longitude));
    let (bottom, top) = (lo.latitude.min(hi.latitude), lo.latitude.max(hi.latitude));
    (left..=right).contains(&point.longitude) && (bottom..=top).contains(&point.latitude)
}

/// Parses the official route_guide_db.json format:
/// `[{"location": {"latitude": .., "longitude": ..}, "name": ".."}, ...]`.
/// A missing name or coordinate is empty or zero, as Go's decoder leaves it.
pub fn parse_features(json: &str) -> Result<Vec<Feature>, String> {
    let value: Value = serde_json::from_str(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let entries = value.as_array().ok_or("expected a JSON array of features")?;
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| parse_feature(entry).map_err(|why| format!("feature #{}: {why}", i + 1)))
        .collect()
}

fn parse_feature(entry: &Value) -> Result<Feature, String> {
    let object = entry.as_object().ok_or("expected an object")?;
    let name = match object.get("name") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(name)) => name.clone(),
        Some(_) => return Err("\"name\" is not a string".to_string()),
    };
    let location = match object.get("location") {
        None | Some(Value::Null) => Point::default(),
        Some(Value::Object(location)) => {
            let coordinate = |key: &str| match location.get(key) {
                None | Some(Value::Null) => Ok(0),
                Some(v) => v
                    .as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(|| format!("location.{key} is not a 32-bit integer: {v}")),
            };
            point(coordinate("latitude")?, coordinate("longitude")?)
        }
        Some(_) => return Err("\"location\" is not an object".to_string()),
    };
    Ok(Feature { name, location: Some(location).into(), ..Default::default() })
}

/// Reads and parses a feature database file; the error is one line that
/// names the file.
pub fn load_features(path: &Path) -> Result<Vec<Feature>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read route database {}: {e}", path.display()))?;
    parse_features(&text).map_err(|e| format!("route database {}: {e}", path.display()))
}

/// A few features of grpc-go's route_guide_db.json, served when no
/// database file is given.
pub fn default_features() -> Vec<Feature> {
    const DEFAULT_DB: &str = r#"[
        {"location": {"latitude": 407838351, "longitude": -746143763}, "name": "Patriots Path, Mendham, NJ 07945, USA"},
        {"location": {"latitude": 408122808, "longitude": -743999179}, "name": "101 New Jersey 10, Whippany, NJ 07981, USA"},
        {"location": {"latitude": 413628156, "longitude": -749015468}, "name": "U.S. 6, Shohola, PA 18458, USA"},
        {"location": {"latitude": 419999544, "longitude": -740371136}, "name": "5 Conners Road, Kingston, NY 12401, USA"},
        {"location": {"latitude": 409146138, "longitude": -746188906}, "name": "Berkshire Valley Management Area Trail, Jefferson, NJ, USA"},
        {"location": {"latitude": 402647019, "longitude": -747071791}, "name": ""}
    ]"#;
    // A constant checked by the `default_db_parses` unit test.
    parse_features(DEFAULT_DB).unwrap_or_default()
}

/// The map key of a location; a note without one is at (0, 0), as in Go.
fn location_key(point: Option<&Point>) -> (i32, i32) {
    point.map_or((0, 0), |p| (p.latitude, p.longitude))
}

#[derive(Default)]
struct RouteNotes {
    /// Shared, so that answering a note copies pointers under the lock,
    /// not messages.
    by_location: HashMap<(i32, i32), Vec<Arc<RouteNote>>>,
    total: usize,
}

/// Serves `routeguide.RouteGuide`. Clones share the feature list and the
/// route notes.
#[derive(Clone)]
pub struct RouteGuideService {
    /// Read-only after start.
    features: Arc<Vec<Feature>>,
    /// Protects the notes RouteChat received, by location. Held only to
    /// append and copy, never across an await or a send.
    route_notes: Arc<Mutex<RouteNotes>>,
}

impl RouteGuideService {
    pub fn new(features: Vec<Feature>) -> Self {
        RouteGuideService { features: Arc::new(features), route_notes: Arc::default() }
    }

    fn feature_at(&self, point: &Point) -> Option<&Feature> {
        self.features.iter().find(|f| f.location.as_ref() == Some(point))
    }

    /// Stores `note` and returns every note at its location so far, the new
    /// one last. The copy (of at most [`MAX_NOTES_PER_LOCATION`] pointers)
    /// lets the caller send without holding the lock.
    fn record_note(&self, note: RouteNote) -> Result<Vec<Arc<RouteNote>>, CallError> {
        let key = location_key(note.location.as_ref());
        // Every update is one push and one increment: a poisoned lock still
        // holds a consistent map.
        let mut notes = self.route_notes.lock().unwrap_or_else(|e| e.into_inner());
        if notes.total >= MAX_STORED_NOTES {
            return Err(CallError::new(
                RpcStatusCode::RESOURCE_EXHAUSTED,
                format!("the server already keeps {MAX_STORED_NOTES} route notes; no more are accepted"),
            ));
        }
        let at_location = notes.by_location.entry(key).or_default();
        if at_location.len() >= MAX_NOTES_PER_LOCATION {
            return Err(CallError::new(
                RpcStatusCode::RESOURCE_EXHAUSTED,
                format!(
                    "location ({}, {}) already has {MAX_NOTES_PER_LOCATION} route notes; no more are accepted there",
                    key.0, key.1
                ),
            ));
        }
        at_location.push(Arc::new(note));
        let copy = at_location.clone();
        notes.total += 1;
        Ok(copy)
    }
}

impl Default for RouteGuideService {
    fn default() -> Self {
        RouteGuideService::new(default_features())
    }
}

impl RouteGuide for RouteGuideService {
    /// The feature at the point, or a feature with an empty name there.
    async fn get_feature(&self, _call: &mut Call, point: Point) -> Result<Feature, CallError> {
        Ok(self
            .feature_at(&point)
            .cloned()
            .unwrap_or_else(|| Feature { location: Some(point).into(), ..Default::default() }))
    }

    /// Streams every feature inside the rectangle, in database order.
    async fn list_features(
        &self,
        _call: &mut Call,
        rect: Rectangle,
        sink: &mut ServerStreamingSink<Feature>,
    ) -> Result<(), CallError> {
        let found: Vec<&Feature> =
            self.features.iter().filter(|f| in_range(f.location.get_or_default(), &rect)).collect();
        let last = found.len().saturating_sub(1);
        for (i, feature) in found.into_iter().enumerate() {
            sink.send((feature.clone(), WriteFlags::default().buffer_hint(i < last))).await?;
        }
        Ok(())
    }

    /// Reads the points of a route; when the client closes its side, answers
    /// how many points and known features it had, how far it went and how
    /// many seconds the call took.
    async fn record_route(
        &self,
        _call: &mut Call,
        points: &mut RequestStream<Point>,
    ) -> Result<RouteSummary, CallError> {
        let start = Instant::now();
        let mut summary = RouteSummary::default();
        let mut last: Option<Point> = None;
        while let Some(point) = points.try_next().await? {
            // Go's int32 counters wrap; ours do the same rather than panic.
            summary.point_count = summary.point_count.wrapping_add(1);
            if self.feature_at(&point).is_some() {
                summary.feature_count = summary.feature_count.wrapping_add(1);
            }
            if let Some(last) = &last {
                summary.distance = summary.distance.wrapping_add(distance(last, &point));
            }
            last = Some(point);
        }
        summary.elapsed_time = i32::try_from(start.elapsed().as_secs()).unwrap_or(i32::MAX);
        Ok(summary)
    }

    /// For each note received, stores it and sends back every note at its
    /// location so far (the new one included, last), until the client
    /// closes its side.
    async fn route_chat(
        &self,
        _call: &mut Call,
        notes: &mut RequestStream<RouteNote>,
        sink: &mut DuplexSink<RouteNote>,
    ) -> Result<(), CallError> {
        while let Some(note) = notes.try_next().await? {
            let at_location = self.record_note(note)?;
            let last = at_location.len().saturating_sub(1);
            for (i, note) in at_location.into_iter().enumerate() {
                sink.send(((*note).clone(), WriteFlags::default().buffer_hint(i < last))).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_db_parses() {
        assert_eq!(default_features().len(), 6);
    }

    #[test]
    fn bad_databases_are_rejected_with_the_reason() {
        assert_eq!(parse_features("{}").unwrap_err(), "expected a JSON array of features");
        assert_eq!(
            parse_features(r#"[{"location": {"latitude": 1e12}}]"#).unwrap_err(),
            "feature #1: location.latitude is not a 32-bit integer: 1000000000000.0"
        );
        assert!(parse_features("[").unwrap_err().starts_with("not valid JSON: "));
    }
}
