//! Commands besides `serve`: clients and operator tools.

pub mod import;
