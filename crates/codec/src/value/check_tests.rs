//! [`check_value`]: what a decoder may be handed, and the shapes that once crashed the broker.

use super::*;
use proptest::prelude::*;
use serde_amqp::primitives::{Array, OrderedMap, Symbol};
use serde_amqp::Value;

/// `n` lists, each holding the next: `[[[...]]]` (the frame tests build crafted Opens on it).
pub(crate) fn nested_lists(n: usize) -> Vec<u8> {
    let mut v = vec![0x45]; // the innermost: list0
    for _ in 0..n {
        let mut outer = vec![0xd0];
        outer.extend_from_slice(&(4 + v.len() as u32).to_be_bytes());
        outer.extend_from_slice(&1u32.to_be_bytes());
        outer.extend_from_slice(&v);
        v = outer;
    }
    v
}

#[test]
fn values_a_client_sends_pass_with_their_exact_length() {
    let mut map = OrderedMap::new();
    map.insert(
        Value::Symbol(Symbol::from("k")),
        Value::List(vec![Value::Int(1)]),
    );
    let values = vec![
        Value::Null,
        Value::Long(-7),
        Value::String("x".repeat(300)),
        Value::List(vec![Value::Bool(true), Value::Symbol(Symbol::from("s"))]),
        Value::Map(map),
        Value::Array(Array::from(vec![
            Value::Int(1),
            Value::Int(2),
            Value::Int(3),
        ])),
        Value::Array(Array::from(vec![
            Value::String("a".into()),
            Value::String("bc".into()),
        ])),
        Value::Array(Array::from(vec![Value::Bool(true), Value::Bool(false)])),
        Value::Array(Array::from(Vec::<Value>::new())),
    ];
    for v in values {
        let enc = serde_amqp::to_vec(&v).unwrap();
        let mut padded = enc.clone();
        padded.push(0x40);
        let n = check_value(&padded).unwrap_or_else(|e| panic!("{v:?} {enc:02x?}: {e}"));
        assert_eq!(n, enc.len(), "{v:?}");
        let back: Value = crate::decode(&enc, "value").unwrap();
        assert_eq!(back, v);
    }
}

#[test]
fn nesting_is_bounded_at_max_nesting() {
    // list0 at the bottom counts as a level of its own
    assert!(check_value(&nested_lists(MAX_NESTING - 1)).is_ok());
    assert!(matches!(
        check_value(&nested_lists(MAX_NESTING)),
        Err(CodecError::Invalid("values nested too deeply"))
    ));
    // the shape that overflowed the stack: thousands of levels, no recursion past the limit
    let deep = nested_lists(100_000);
    assert!(check_value(&deep).is_err());
    assert!(crate::decode::<Value>(&deep, "value").is_err());
    // described values nest as deeply as lists do
    let mut described = vec![0x00; 10_000];
    described.push(0x40);
    assert!(check_value(&described).is_err());
}

#[test]
fn the_deepest_accepted_value_decodes_in_a_small_stack() {
    // tokio's workers have 2 MiB stacks; the deepest value we let through must decode with a
    // fraction of that, whatever the build's frame sizes
    let deep = nested_lists(MAX_NESTING - 1);
    let mut described = vec![0x00, 0x53, 0x01];
    described.extend_from_slice(&nested_lists(MAX_NESTING - 2));
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let v: Value = crate::decode(&deep, "value").unwrap();
            assert!(matches!(v, Value::List(_)));
            let v: Value = crate::decode(&described, "value").unwrap();
            assert!(matches!(v, Value::Described(_)));
        })
        .unwrap()
        .join()
        .expect("decoding the deepest value fits in 256 KiB of stack");
}

#[test]
fn declared_lengths_must_be_present() {
    // sym32 declaring 4 GiB, as in a 19-byte SASL init
    let sym = [0xb3, 0xff, 0xff, 0xff, 0xff, b'P'];
    assert!(matches!(check_value(&sym), Err(CodecError::Truncated)));
    assert!(crate::decode::<Symbol>(&sym, "symbol").is_err());
    // the same inside a list whose own size is honest about its 6 bytes
    let list = [0xc0, 7, 1, 0xb3, 0xff, 0xff, 0xff, 0xff, 0x40];
    assert!(check_value(&list).is_err());
    // a list32 declaring 4 GiB of elements
    let big = [0xd0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0x40];
    assert!(matches!(check_value(&big), Err(CodecError::Truncated)));
}

#[test]
fn declared_counts_must_match_the_elements() {
    // count 200 in a list of 3 bytes
    assert!(check_value(&[0xc0, 4, 200, 0x40, 0x40, 0x40]).is_err());
    // count 1 where two elements are present
    assert!(check_value(&[0xc0, 3, 1, 0x40, 0x40]).is_err());
    // a map with an odd count
    assert!(check_value(&[0xc1, 2, 1, 0x40]).is_err());
    // a list32 declaring 2^32-1 elements
    let mut l = vec![0xd0, 0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0x40, 0x40];
    assert!(check_value(&l).is_err());
    l[5..9].copy_from_slice(&2u32.to_be_bytes());
    assert_eq!(check_value(&l).unwrap(), l.len());
    // size smaller than the count field itself
    assert!(check_value(&[0xd0, 0, 0, 0, 1, 0, 0, 0, 0]).is_err());
}

#[test]
fn zero_width_array_elements_are_bounded_by_the_arrays_size() {
    // array32 of 65,536 nulls: 10 bytes that would decode to megabytes
    let mut a = vec![0xf0, 0, 0, 0, 5];
    a.extend_from_slice(&65_536u32.to_be_bytes());
    a.push(0x40);
    assert!(matches!(
        check_value(&a),
        Err(CodecError::Invalid("too many zero-width array elements"))
    ));
    assert!(crate::decode::<Value>(&a, "value").is_err());
    // array8 of 255 empty lists
    assert!(check_value(&[0xe0, 2, 255, 0x45]).is_err());
    // a handful is fine
    assert_eq!(check_value(&[0xe0, 2, 3, 0x40]).unwrap(), 4);
}

#[test]
fn fixed_width_array_elements_must_fill_the_array() {
    // array8 of 3 ints with the bytes of two
    assert!(check_value(&[0xe0, 10, 3, 0x71, 0, 0, 0, 1, 0, 0, 0, 2]).is_err());
    assert!(check_value(&[0xe0, 14, 3, 0x71, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]).is_ok());
    // a descriptor inside an array constructor that is itself a descriptor
    assert!(check_value(&[0xe0, 4, 1, 0x00, 0x00, 0x40]).is_err());
}

#[test]
fn the_value_budget_caps_what_one_decode_can_allocate() {
    // a list32 of MAX_VALUES + 1 nulls: every count is honest, the total is too much
    let n = MAX_VALUES + 1;
    let mut l = vec![0xd0];
    l.extend_from_slice(&(4 + n as u32).to_be_bytes());
    l.extend_from_slice(&(n as u32).to_be_bytes());
    l.resize(l.len() + n, 0x40);
    assert!(matches!(
        check_value(&l),
        Err(CodecError::Invalid("too many values in one value"))
    ));
    // just under it passes
    let n = MAX_VALUES - 1;
    let mut l = vec![0xd0];
    l.extend_from_slice(&(4 + n as u32).to_be_bytes());
    l.extend_from_slice(&(n as u32).to_be_bytes());
    l.resize(l.len() + n, 0x40);
    assert_eq!(check_value(&l).unwrap(), l.len());
}

#[test]
fn map_entries_of_a_short_map_is_an_error() {
    // map8 whose size (0) leaves no room for its count: once a slice panic
    assert!(map_entries(&[0xc1, 0]).is_err());
    assert!(map_entries(&[0xd1, 0, 0, 0, 0]).is_err());
}

proptest! {
    #[test]
    fn checking_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(n) = check_value(&bytes) {
            prop_assert!(n <= bytes.len());
            let _ = crate::decode::<Value>(&bytes, "value");
        }
    }

    #[test]
    fn encoded_values_always_pass(v in arb_value()) {
        let enc = serde_amqp::to_vec(&v).unwrap();
        prop_assert_eq!(check_value(&enc).unwrap(), enc.len());
    }
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Long),
        any::<u32>().prop_map(Value::Uint),
        ".{0,40}".prop_map(Value::String),
        "[a-z]{0,10}".prop_map(|s| Value::Symbol(Symbol::from(s))),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
            proptest::collection::vec(("[a-z]{1,6}", inner), 0..6).prop_map(|kv| {
                let mut m = OrderedMap::new();
                for (k, v) in kv {
                    m.insert(Value::Symbol(Symbol::from(k)), v);
                }
                Value::Map(m)
            }),
            proptest::collection::vec(any::<i32>(), 0..8).prop_map(|v| Value::Array(Array::from(
                v.into_iter().map(Value::Int).collect::<Vec<_>>()
            ))),
        ]
    })
}
