//! Python's `random.Random` (CPython 3.x, MT19937) — just enough of it to draw few-shot
//! examples exactly as lm-evaluation-harness does with `rnd.sample(docs, k)`.
//!
//! With the same seed and the same list, [`PyRandom::sample`] returns the indices CPython's
//! `random.Random(seed).sample(range(n), k)` returns, so a Python script can rebuild okapi's
//! few-shot prompts (tests/fixtures/check_eval.py does).
//!
//! Ported from CPython's `Modules/_randommodule.c` (`init_genrand`, `init_by_array`,
//! `genrand_uint32`, `getrandbits`) and `Lib/random.py` (`_randbelow_with_getrandbits`,
//! `sample`); checked against CPython 3.11 in the unit tests below.

const N: usize = 624;
const M: usize = 397;

pub struct PyRandom {
    mt: [u32; N],
    idx: usize,
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative integer seed (the key is the seed's 32-bit
    /// words, least significant first, as CPython's `random_seed` builds it).
    pub fn new(seed: u64) -> PyRandom {
        let mut r = PyRandom { mt: [0; N], idx: N };
        let key: Vec<u32> = if seed >> 32 == 0 { vec![seed as u32] } else { vec![seed as u32, (seed >> 32) as u32] };
        r.init_by_array(&key);
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            self.mt[i] = 1812433253u32.wrapping_mul(self.mt[i - 1] ^ (self.mt[i - 1] >> 30)).wrapping_add(i as u32);
        }
        self.idx = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19650218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.mt[i - 1] ^ (self.mt[i - 1] >> 30);
            self.mt[i] = (self.mt[i] ^ prev.wrapping_mul(1664525)).wrapping_add(key[j]).wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.mt[i - 1] ^ (self.mt[i - 1] >> 30);
            self.mt[i] = (self.mt[i] ^ prev.wrapping_mul(1566083941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
        }
        self.mt[0] = 0x8000_0000;
    }

    fn next_u32(&mut self) -> u32 {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        if self.idx >= N {
            for kk in 0..N {
                let y = (self.mt[kk] & UPPER) | (self.mt[(kk + 1) % N] & LOWER);
                self.mt[kk] = self.mt[(kk + M) % N] ^ (y >> 1) ^ if y & 1 == 1 { MATRIX_A } else { 0 };
            }
            self.idx = 0;
        }
        let mut y = self.mt[self.idx];
        self.idx += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `getrandbits(k)` for k ≤ 64 (32-bit words, least significant first).
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64);
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return (self.next_u32() >> (32 - k)) as u64;
        }
        let lo = self.next_u32() as u64;
        let hi = (self.next_u32() >> (64 - k)) as u64;
        lo | (hi << 32)
    }

    /// `_randbelow_with_getrandbits(n)`: uniform in [0, n), n > 0.
    pub fn randbelow(&mut self, n: usize) -> usize {
        assert!(n > 0);
        let k = usize::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(k) as usize;
            if r < n {
                return r;
            }
        }
    }

    /// `sample(range(n), k)`: k distinct indices in selection order (CPython's two strategies,
    /// pool for small populations, rejection set for large ones, chosen by the same rule).
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "sample larger than population");
        let mut setsize = 21usize;
        if k > 5 {
            let e = ((k * 3) as f64).ln() / 4f64.ln();
            setsize += 4usize.pow(e.ceil() as u32);
        }
        let mut out = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow(n - i);
                out.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut selected = std::collections::HashSet::with_capacity(k);
            for _ in 0..k {
                let mut j = self.randbelow(n);
                while selected.contains(&j) {
                    j = self.randbelow(n);
                }
                selected.insert(j);
                out.push(j);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::PyRandom;

    // Expected values printed by CPython 3.11.7 (random.Random(seed) ...).
    #[test]
    fn matches_cpython() {
        let mut r = PyRandom::new(42);
        assert_eq!((0..3).map(|_| r.getrandbits(32)).collect::<Vec<_>>(), vec![2746317213, 478163327, 107420369]);
        assert_eq!(PyRandom::new(42).sample(100, 25), vec![81, 14, 3, 94, 35, 31, 28, 17, 13, 86, 69, 11, 75, 54, 4, 97, 88, 27, 29, 64, 77, 84, 71, 25, 89]);
        let mut r = PyRandom::new(42);
        assert_eq!(r.sample(10, 3), vec![1, 0, 4]);
        assert_eq!(r.sample(1000, 7), vec![250, 228, 142, 754, 104, 692, 758]);
        assert_eq!(r.sample(30, 26), vec![28, 17, 2, 18, 13, 1, 0, 27, 6, 7, 16, 23, 29, 21, 25, 3, 20, 9, 4, 26, 22, 19, 5, 12, 24, 15]);
        assert_eq!(PyRandom::new((1 << 40) + 5).sample(50, 5), vec![32, 33, 17, 42, 1]);
        assert_eq!(PyRandom::new(0).sample(5, 5), vec![3, 4, 0, 1, 2]);
    }
}
