//! `depotctl call`: KEY=VALUE parameters and result printing.

use depot_client::{Endpoint, Options};
use serde_json::{Map, Value};
use std::path::Path;

use crate::rpc::Rpc;
use crate::Failure;

/// Builds the params object from `KEY=VALUE` arguments. VALUE is JSON when
/// it parses, else a string; `@FILE` reads JSON from FILE; `@@text` is the
/// string `@text`. Errors are usage errors.
pub fn parse_params(
    args: &[String],
    read_file: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Result<Value, String> {
    let mut map = Map::new();
    for arg in args {
        let Some((key, raw)) = arg.split_once('=') else {
            return Err(format!("parameter {arg:?} is not KEY=VALUE"));
        };
        if key.is_empty() {
            return Err(format!("parameter {arg:?} has no name"));
        }
        let value = if let Some(lit) = raw.strip_prefix("@@") {
            Value::String(format!("@{lit}"))
        } else if let Some(file) = raw.strip_prefix('@') {
            let text = read_file(Path::new(file))
                .map_err(|e| format!("parameter '{key}': cannot read {file}: {e}"))?;
            serde_json::from_str(&text)
                .map_err(|e| format!("parameter '{key}': {file} is not JSON: {e}"))?
        } else {
            serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
        };
        if map.insert(key.to_string(), value).is_some() {
            return Err(format!("parameter '{key}' given twice"));
        }
    }
    Ok(Value::Object(map))
}

/// A result for people: strings as they are, everything else as indented
/// JSON.
pub fn render_human(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string()),
    }
}

/// A result for programs: compact JSON.
pub fn render_json(v: &Value) -> String {
    v.to_string()
}

/// `depotctl call`.
pub async fn run(
    ep: &Endpoint,
    opts: Options,
    flow_id: Option<&str>,
    method: &str,
    args: &[String],
    json: bool,
) -> Result<(), Failure> {
    let params = parse_params(args, &|p| std::fs::read_to_string(p)).map_err(Failure::Usage)?;
    let client = Rpc::connect(ep, opts, flow_id).await?;
    let result = client.call(method, params).await?;
    println!(
        "{}",
        if json {
            render_json(&result)
        } else {
            render_human(&result)
        }
    );
    Ok(())
}

/// `depotctl ping`: Host.ping2.
pub async fn ping(ep: &Endpoint, opts: Options, flow_id: Option<&str>) -> Result<(), Failure> {
    let client = Rpc::connect(ep, opts, flow_id).await?;
    client.call("Host.ping2", Value::Null).await?;
    println!("ok");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io;

    fn parse(args: &[&str]) -> Result<Value, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse_params(&args, &|p: &Path| match p.to_str() {
            Some("p.json") => Ok(r#"{"a": [1, 2]}"#.into()),
            Some("bad.json") => Ok("{nope".into()),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, "No such file")),
        })
    }

    #[test]
    fn values_are_json_when_they_parse() {
        assert_eq!(
            parse(&[
                "n=5",
                "f=0.3",
                "ids=[\"a\"]",
                "x=true",
                "z=null",
                "name=abc",
                "id=5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a",
                "q=\"5\"",
                "empty=",
                "eq=a=b",
                "o={\"k\": 1}",
            ])
            .unwrap(),
            json!({"n": 5, "f": 0.3, "ids": ["a"], "x": true, "z": null, "name": "abc",
                   "id": "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a", "q": "5", "empty": "",
                   "eq": "a=b", "o": {"k": 1}})
        );
        assert_eq!(parse(&[]).unwrap(), json!({}));
    }

    #[test]
    fn files_and_escapes() {
        assert_eq!(
            parse(&["p=@p.json", "s=@@home"]).unwrap(),
            json!({"p": {"a": [1, 2]}, "s": "@home"})
        );
        assert!(parse(&["p=@missing.json"])
            .unwrap_err()
            .contains("missing.json"));
        assert!(parse(&["p=@bad.json"]).unwrap_err().contains("not JSON"));
    }

    #[test]
    fn bad_arguments() {
        assert!(parse(&["novalue"]).unwrap_err().contains("KEY=VALUE"));
        assert!(parse(&["=1"]).is_err());
        assert!(parse(&["a=1", "a=2"]).unwrap_err().contains("twice"));
    }

    #[test]
    fn rendering() {
        assert_eq!(render_human(&json!("abc")), "abc");
        assert_eq!(render_human(&json!(true)), "true");
        assert_eq!(render_human(&json!({"a": 1})), "{\n  \"a\": 1\n}");
        assert_eq!(render_json(&json!({"a": [1, "x"]})), r#"{"a":[1,"x"]}"#);
        assert_eq!(render_json(&json!("abc")), r#""abc""#);
    }
}
