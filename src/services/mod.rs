//! gRPC services, one file a service. Each implements the trait `build.rs`
//! generates for it ([`crate::rpc::api`]): its handlers return the call's
//! outcome, and the call runtime ([`crate::rpc`]) does the rest.

pub mod chat;
pub mod greet;
pub mod health;
pub mod helloworld;
pub mod interop;
pub mod reflection;
pub mod route_guide;
