//! idv-token-operator: keeps OAuth2 access tokens from the Flemish government's IDV
//! authorization servers fresh in Kubernetes Secrets.
//!
//! Pure decision logic (`api`, `names`, `jwk`, `assertion`, `authserver`, `policy`,
//! `schedule`, `resources`, `liveness`) sits in the middle; I/O (`oauth`'s HTTP client,
//! `token_client`, `reconcile`, `controller`) at the edges.

pub mod api;
pub mod assertion;
pub mod authserver;
pub mod backoff;
pub mod caches;
pub mod controller;
pub mod credential;
pub mod error;
pub mod events;
pub mod fetcher;
pub mod http;
pub mod jwk;
pub mod leader;
pub mod liveness;
pub mod metrics;
pub mod names;
pub mod oauth;
pub mod policy;
pub mod reconcile;
pub mod resources;
pub mod schedule;
pub mod telemetry;
pub mod token_client;
pub mod writeback;
