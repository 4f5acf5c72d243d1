//! data-ingestion-api: ingest user records over HTTP, decouple acceptance from storage
//! through a topic, store them in a document database and serve them back by id.
//!
//! ```text
//! POST /api/users ─▶ validate ─▶ publish (durable) ─▶ topic ─▶ consume ─▶ upsert ─▶ store
//! GET  /api/users/{id} ──────────────────────────────────────────────▶ point read ─┘
//! ```
//!
//! # Layout
//! - [`config`]: every setting, from the environment, in one struct.
//! - [`app`]: builds the backends and the router in one place; binds first; runs until stopped.
//! - [`server`]: the HTTP/1.1 server with its limits (connections, header size and time).
//! - [`domain`]: the user record and its parsing; pure.
//! - [`routes`]: one module per Functions function, and the API's one error type.
//! - [`broker`]: the [`broker::Publisher`] trait, the embedded SQLite topic and the Service Bus
//!   publisher; dead letters for operators.
//! - [`store`]: the [`store::UserStore`] trait, the embedded SQLite document store and Cosmos DB.
//! - [`consume`]: the consume step shared by `POST /ingest-consume` and the worker.
//! - [`wal`]: when the embedded SQLite files checkpoint their WAL.
//! - [`worker`]: drains the embedded topic; waits out store outages, parks poison messages.
//! - [`telemetry`]: JSON logs on stdout, metrics (`/metrics`, `/status`), Application Insights.
//! - [`cli`]: the other commands: `import` (a client of the API), the operator's `get`,
//!   `export` and `deadletters` (read the stores directly) and `completions`.

pub mod app;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod consume;
pub mod domain;
pub mod routes;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod wal;
pub mod worker;
