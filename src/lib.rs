//! idv-token-operator: keeps OAuth2 access tokens from the Flemish government's IDV
//! authorization servers fresh in Kubernetes Secrets.
//!
//! Pure decision logic (`api`, `names`, `jwk`, `credential`, `assertion`, `authserver`,
//! `policy`, `schedule`, `token_secret`, `status`, `liveness`) sits in the middle; I/O
//! (`oauth`'s HTTP client, `token_client`, `caches`, `reconcile`, `controller`, `probes`) at
//! the edges. `proxy` is the token-injecting sidecar: its message rewriting and token parsing
//! are pure, its server and client I/O.

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
pub mod jwk;
pub mod leader;
pub mod liveness;
pub mod memory;
pub mod metrics;
pub mod names;
pub mod oauth;
pub mod policy;
pub mod probes;
pub mod proxy;
pub mod reconcile;
pub mod schedule;
pub mod status;
pub mod telemetry;
pub mod token_client;
pub mod token_secret;
pub mod writeback;
