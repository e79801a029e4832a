//! `Math.random` for scripts. A snapshot freezes QuickJS's own generator, so every job
//! would see the same sequence; this one is reseeded by the host for every job.
//! xoshiro256++ (not cryptographic, as `Math.random` never is).

use std::cell::Cell;

thread_local! {
    static STATE: Cell<[u64; 4]> = const { Cell::new([1, 2, 3, 4]) };
}

/// splitmix64 expands the host's 64-bit seed into a full state, as xoshiro's authors advise.
pub fn seed(seed: u64) {
    let mut x = seed;
    let mut next = || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    STATE.set([next(), next(), next(), next()]);
}

pub fn next_f64() -> f64 {
    let mut s = STATE.get();
    let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
    let t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = s[3].rotate_left(45);
    STATE.set(s);
    // 53 random bits -> [0, 1).
    (result >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}
