//! How a subscription's rules are stored: name, filter (true, false, SQL text with its
//! parameters, or correlation fields and properties) and the action's text, if any. Version
//! byte first (1: no action field, written before actions existed); strings are
//! u32-length-prefixed UTF-8.

use bytes::{BufMut, Bytes, BytesMut};
use ferrobus_filter::{CorrelationFilter, Filter, Parameters, Rule, SqlAction, SqlFilter, Value};

use crate::StoreError;

const VERSION: u8 = 2;

/// Encodes a rule.
pub fn encode_rule(rule: &Rule) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(VERSION);
    put_str(&mut b, &rule.name);
    match &rule.filter {
        Filter::True => b.put_u8(0),
        Filter::False => b.put_u8(1),
        Filter::Sql(f) => {
            b.put_u8(2);
            put_str(&mut b, f.expression());
            let params: Vec<_> = f.parameters().iter().collect();
            b.put_u32(params.len() as u32);
            for (name, v) in params {
                put_str(&mut b, name);
                put_value(&mut b, v);
            }
        }
        Filter::Correlation(c) => {
            b.put_u8(3);
            for f in correlation_fields(c) {
                match f {
                    None => b.put_u8(0),
                    Some(s) => {
                        b.put_u8(1);
                        put_str(&mut b, s);
                    }
                }
            }
            b.put_u32(c.properties.len() as u32);
            for (name, v) in &c.properties {
                put_str(&mut b, name);
                put_value(&mut b, v);
            }
        }
    }
    match &rule.action {
        None => b.put_u8(0),
        Some(a) => {
            b.put_u8(1);
            put_str(&mut b, a.expression());
        }
    }
    b.freeze()
}

fn correlation_fields(c: &CorrelationFilter) -> [&Option<String>; 8] {
    [
        &c.correlation_id,
        &c.message_id,
        &c.to,
        &c.reply_to,
        &c.label,
        &c.session_id,
        &c.reply_to_session_id,
        &c.content_type,
    ]
}

/// Decodes a rule (its SQL parsed again).
pub fn decode_rule(v: &[u8]) -> Result<Rule, StoreError> {
    let mut r = Reader { v, pos: 0 };
    let version = r.u8()?;
    if version != 1 && version != VERSION {
        return Err(bad());
    }
    let name = r.string()?;
    let filter = match r.u8()? {
        0 => Filter::True,
        1 => Filter::False,
        2 => {
            let text = r.string()?;
            let mut params = Parameters::new();
            for _ in 0..r.u32()? {
                let n = r.string()?;
                params.insert(&n, r.value()?);
            }
            let f = SqlFilter::parse(&text, &params)
                .map_err(|e| StoreError::Corrupt(format!("stored rule '{name}': {e}")))?;
            Filter::Sql(f)
        }
        3 => {
            let mut f = [(); 8].map(|_| None);
            for slot in &mut f {
                *slot = match r.u8()? {
                    0 => None,
                    1 => Some(r.string()?),
                    _ => return Err(bad()),
                };
            }
            let [correlation_id, message_id, to, reply_to, label, session_id, reply_to_session_id, content_type] =
                f;
            let mut properties = Vec::new();
            for _ in 0..r.u32()? {
                let n = r.string()?;
                properties.push((n, r.value()?));
            }
            Filter::Correlation(CorrelationFilter {
                correlation_id,
                message_id,
                to,
                reply_to,
                label,
                session_id,
                reply_to_session_id,
                content_type,
                properties,
            })
        }
        _ => return Err(bad()),
    };
    let action = match (version, if version == 1 { 0 } else { r.u8()? }) {
        (_, 0) => None,
        (_, 1) => {
            let text = r.string()?;
            let a = SqlAction::parse(&text, &Parameters::new())
                .map_err(|e| StoreError::Corrupt(format!("stored rule '{name}': {e}")))?;
            Some(a)
        }
        _ => return Err(bad()),
    };
    if r.pos != v.len() {
        return Err(bad());
    }
    Ok(Rule {
        name,
        filter,
        action,
    })
}

fn bad() -> StoreError {
    StoreError::Corrupt("rule record".into())
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u32(s.len() as u32);
    b.put_slice(s.as_bytes());
}

fn put_value(b: &mut BytesMut, v: &Value) {
    match v {
        Value::Null => b.put_u8(0),
        Value::Bool(x) => {
            b.put_u8(1);
            b.put_u8(u8::from(*x));
        }
        Value::Long(n) => {
            b.put_u8(2);
            b.put_i64(*n);
        }
        Value::Double(x) => {
            b.put_u8(3);
            b.put_f64(*x);
        }
        Value::String(s) => {
            b.put_u8(4);
            put_str(b, s);
        }
        Value::DateTime(t) => {
            b.put_u8(5);
            b.put_i64(*t);
        }
        Value::TimeSpan(t) => {
            b.put_u8(6);
            b.put_i64(*t);
        }
        Value::Uuid(u) => {
            b.put_u8(7);
            b.put_slice(u);
        }
        Value::Opaque(bytes) => {
            b.put_u8(8);
            b.put_u32(bytes.len() as u32);
            b.put_slice(bytes);
        }
    }
}

struct Reader<'a> {
    v: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], StoreError> {
        let s = self.v.get(self.pos..self.pos + n).ok_or_else(bad)?;
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn i64(&mut self) -> Result<i64, StoreError> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self) -> Result<String, StoreError> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| bad())
    }

    fn value(&mut self) -> Result<Value, StoreError> {
        Ok(match self.u8()? {
            0 => Value::Null,
            1 => Value::Bool(self.u8()? != 0),
            2 => Value::Long(self.i64()?),
            3 => Value::Double(f64::from_bits(self.i64()? as u64)),
            4 => Value::String(self.string()?),
            5 => Value::DateTime(self.i64()?),
            6 => Value::TimeSpan(self.i64()?),
            7 => Value::Uuid(self.take(16)?.try_into().expect("16 bytes")),
            8 => {
                let n = self.u32()? as usize;
                Value::Opaque(self.take(n)?.to_vec())
            }
            _ => return Err(bad()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_of_every_kind_round_trip_and_garbage_is_refused() {
        let sql = SqlFilter::parse(
            "color = @c AND amount > 100",
            &Parameters::new().with("@c", "red"),
        )
        .unwrap();
        let rules = [
            Rule::default_rule(),
            Rule {
                name: "never".into(),
                filter: Filter::False,
                action: Some(SqlAction::parse("SET a = 1; REMOVE b", &Parameters::new()).unwrap()),
            },
            Rule {
                name: "sql".into(),
                filter: Filter::Sql(sql),
                action: None,
            },
            Rule {
                name: "corr".into(),
                filter: Filter::Correlation(CorrelationFilter {
                    label: Some("blue".into()),
                    content_type: Some("text/plain".into()),
                    properties: vec![
                        ("n".into(), Value::Long(-3)),
                        ("x".into(), Value::Double(1.5)),
                        ("u".into(), Value::Uuid([7; 16])),
                        ("t".into(), Value::DateTime(1_700_000_000_000)),
                        ("z".into(), Value::Null),
                        ("b".into(), Value::Bool(true)),
                    ],
                    ..CorrelationFilter::default()
                }),
                action: None,
            },
        ];
        for r in &rules {
            let enc = encode_rule(r);
            assert_eq!(&decode_rule(&enc).unwrap(), r);
            assert!(decode_rule(&enc[..enc.len() - 1]).is_err());
        }
        assert!(decode_rule(&[9, 0, 0, 0, 0, 0]).is_err());
        // a record written before actions existed (version 1, no action field)
        let mut v1 = encode_rule(&Rule::default_rule()).to_vec();
        v1[0] = 1;
        v1.pop();
        assert_eq!(decode_rule(&v1).unwrap(), Rule::default_rule());
    }
}
