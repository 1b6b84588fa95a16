//! Shared access signature tokens (what the Service Bus SDKs put on `$cbs`).
//!
//! `SharedAccessSignature sr=<url-encoded resource>&sig=<url-encoded base64>&se=<unix
//! seconds>&skn=<key name>`, fields in any order. The signature is HMAC-SHA256, keyed with the
//! UTF-8 bytes of the key as configured, over the raw `sr` text exactly as it appears in the
//! token, a newline, and the `se` text: the SDKs URL-encode `sr` differently, so it must not be
//! re-encoded here.

use ring::hmac;

use crate::config::KeyRule;

/// The prefix that marks a SAS token (whatever the put-token `type` says).
pub const PREFIX: &str = "SharedAccessSignature ";

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The resource (URL-decoded `sr`), e.g. `sb://host:5672/q1`.
    pub resource: String,
    /// The key rule that signed it.
    pub key_name: String,
    /// Expiry, Unix seconds.
    pub expires: u64,
}

/// Checks a token against the key rules at time `now` (Unix seconds).
pub fn validate(token: &str, keys: &[KeyRule], now: u64) -> Result<Grant, String> {
    let body = token
        .strip_prefix(PREFIX)
        .ok_or("not a SharedAccessSignature token")?;
    let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
    for part in body.split('&') {
        let (k, v) = part.split_once('=').ok_or("malformed token field")?;
        match k {
            "sr" => sr = Some(v),
            "sig" => sig = Some(v),
            "se" => se = Some(v),
            "skn" => skn = Some(v),
            _ => {}
        }
    }
    let (sr, sig, se, skn) = match (sr, sig, se, skn) {
        (Some(a), Some(b), Some(c), Some(d)) => (a, b, c, d),
        _ => return Err("the token lacks sr, sig, se or skn".into()),
    };
    let expires: u64 = se.parse().map_err(|_| "se is not a number of seconds")?;
    if now >= expires {
        return Err("the token has expired".into());
    }
    // some SDKs encode unusual key names more than once
    let mut key_name = skn.to_string();
    for _ in 0..3 {
        let d = url_decode(&key_name).ok_or("skn is not URL-encoded text")?;
        if d == key_name {
            break;
        }
        key_name = d;
    }
    let key = keys
        .iter()
        .find(|k| k.name == key_name)
        .ok_or_else(|| format!("unknown key name '{key_name}'"))?;
    let mac = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key.key.as_bytes()),
        format!("{sr}\n{se}").as_bytes(),
    );
    let expected = base64(mac.as_ref());
    let given = url_decode(sig).ok_or("sig is not URL-encoded")?;
    if !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
        return Err("the signature does not match".into());
    }
    Ok(Grant {
        resource: url_decode(sr).ok_or("sr is not URL-encoded")?,
        key_name,
        expires,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Percent-decoding (`+` stays `+`: the SDKs encode spaces as `%20` or `+` only in `sr`,
/// which is compared raw).
fn url_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<KeyRule> {
        vec![KeyRule {
            name: "RootManageSharedAccessKey".into(),
            key: "SAS_KEY_VALUE".into(),
        }]
    }

    // Made with the algorithm of the Python SDK (quote_plus of the URI, HMAC-SHA256 with the
    // key's UTF-8 bytes, base64, quote_plus): python3 -c 'import hmac,hashlib,base64,urllib.parse as u;
    // sr=u.quote_plus("sb://127.0.0.1:5673/q1");se="1795315076";
    // sig=base64.b64encode(hmac.new(b"SAS_KEY_VALUE",(sr+"\n"+se).encode(),hashlib.sha256).digest()).decode();
    // print(f"SharedAccessSignature sr={sr}&sig={u.quote_plus(sig)}&se={se}&skn=RootManageSharedAccessKey")'
    const TOKEN: &str = include_str!("sas_test_token.txt");

    #[test]
    fn a_token_signed_like_the_sdks_is_valid_until_it_expires() {
        let token = TOKEN.trim();
        let g = validate(token, &keys(), 1_700_000_000).unwrap();
        assert_eq!(g.resource, "sb://127.0.0.1:5673/q1");
        assert_eq!(g.key_name, "RootManageSharedAccessKey");
        assert_eq!(
            validate(token, &keys(), 1_795_315_076).unwrap_err(),
            "the token has expired"
        );
    }

    #[test]
    fn wrong_key_unknown_rule_and_garbage_are_refused() {
        let token = TOKEN.trim();
        let other = vec![KeyRule {
            name: "RootManageSharedAccessKey".into(),
            key: "other".into(),
        }];
        assert_eq!(
            validate(token, &other, 0).unwrap_err(),
            "the signature does not match"
        );
        let renamed = token.replace("skn=RootManageSharedAccessKey", "skn=Nobody");
        assert!(validate(&renamed, &keys(), 0)
            .unwrap_err()
            .contains("unknown key name"));
        assert!(validate("Bearer abc", &keys(), 0).is_err());
        assert!(validate("SharedAccessSignature sr=x", &keys(), 0).is_err());
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
