//! The user record and everything that checks it: pure functions, no I/O.
//!
//! Parse, don't validate: a [`UserDocument`] can only be built through [`NewUser::parse`] or
//! [`UserDocument::parse_stored`], so nothing downstream sees unchecked data.

mod country;
mod email;
pub mod json;
mod user;

pub use user::{
    check_ingested_at, check_not_ahead, json_kind, FieldError, NewUser, UserDocument, UserId,
    INGESTED_AT_RANGE, MAX_ATTRIBUTES_BYTES, MAX_ATTRIBUTES_DEPTH, MAX_NAME_CHARS,
};
