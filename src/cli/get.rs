//! `data-ingestion-api get ID`: prints one stored user, read from the store directly, as
//! `GET /api/users/{id}` would serve it.

use std::fmt;
use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, Serializer};
use serde_json::Value;

use super::{open_store, StoreArgs, EXIT_ERROR, EXIT_NOT_FOUND};
use crate::domain::UserId;

pub const AFTER_HELP: &str = "\
Examples:
  data-ingestion-api get usr-1
  data-ingestion-api get usr-1 --compact --data-dir /var/lib/ingest
  INGEST_BACKEND=azure COSMOS_ENDPOINT=https://acct.documents.azure.com:443/ COSMOS_KEY=… \\
      data-ingestion-api get usr-1

Exit status: 0 found, 1 no such user, 2 configuration or connection error.";

#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    /// The user's id, as in `GET /api/users/{ID}`.
    #[arg(value_name = "ID", value_parser = parse_id)]
    pub id: UserId,
    /// Print the document on one line, byte for byte what the API serves, instead of indented.
    #[arg(long)]
    pub compact: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

fn parse_id(raw: &str) -> Result<UserId, String> {
    UserId::parse(raw).map_err(|why| format!("a user id {why}"))
}

pub fn main(args: GetArgs) -> ExitCode {
    let Some(runtime) = super::runtime("get") else {
        return ExitCode::from(EXIT_ERROR);
    };
    match runtime.block_on(run(&args)) {
        Ok(Some(json)) => {
            let mut stdout = std::io::stdout().lock();
            match writeln!(stdout, "{json}").and_then(|()| stdout.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("get: cannot write the user: {e}");
                    ExitCode::from(EXIT_ERROR)
                }
            }
        }
        Ok(None) => {
            eprintln!("get: no user with id {}", args.id);
            ExitCode::from(EXIT_NOT_FOUND)
        }
        Err(e) => {
            eprintln!("get: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// The user as the command prints it, or `None` when the store has no such user.
pub async fn run(args: &GetArgs) -> anyhow::Result<Option<String>> {
    let store = open_store(&args.store).await?;
    let Some(user) = store.get(&args.id).await? else {
        return Ok(None);
    };
    if args.compact {
        return Ok(Some(String::from_utf8(user.json.to_vec())?));
    }
    let doc: InOrder = serde_json::from_slice(&user.json)?;
    Ok(Some(serde_json::to_string_pretty(&doc)?))
}

/// A JSON object with its fields in the order given, so the pretty output lists them as the
/// API does (`serde_json::Value` would sort them).
struct InOrder(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for InOrder {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = InOrder;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<InOrder, A::Error> {
                let mut fields = Vec::new();
                while let Some(field) = map.next_entry()? {
                    fields.push(field);
                }
                Ok(InOrder(fields))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

impl Serialize for InOrder {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_printing_keeps_the_fields_in_the_order_the_api_serves_them() {
        let compact = r#"{"id":"u1","name":"Ada","email":"a@example.com","attributes":{"b":1,"a":[2]},"ingestedAt":"2026-01-01T00:00:00Z"}"#;
        let doc: InOrder = serde_json::from_str(compact).unwrap();
        let pretty = serde_json::to_string_pretty(&doc).unwrap();
        let keys: Vec<usize> = ["\"id\"", "\"name\"", "\"email\"", "\"attributes\"", "\"ingestedAt\""]
            .iter()
            .map(|k| pretty.find(k).unwrap())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{pretty}");
        assert!(pretty.contains("\n  \"name\": \"Ada\",\n"), "{pretty}");
        let reparsed: Value = serde_json::from_str(&pretty).unwrap();
        assert_eq!(reparsed, serde_json::from_str::<Value>(compact).unwrap());
    }
}
