//! Fuzz target `sasl`: see [`ferrobus_codec_fuzz::sasl`] for the input layout and the checks.
#![no_main]

use ferrobus_codec_fuzz::alloc::Counting;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    ferrobus_codec_fuzz::sasl(data);
});
