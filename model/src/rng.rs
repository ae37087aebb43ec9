//! The seeded random numbers of okapi: weight initialisation, data shuffles, sampling seeds and
//! test inputs all draw from this one generator, so a seed means the same numbers everywhere.

/// splitmix64 with Box–Muller normals: small, seeded, identical on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// uniform in [0, 1)
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Moves the stream past `n` normals (each draws two `next_u64`), as if `normal` had been
    /// called `n` times.
    pub fn skip_normals(&mut self, n: u64) {
        self.0 = self.0.wrapping_add(n.wrapping_mul(2).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn skip_normals_lands_where_normal_calls_do() {
        for n in [0u64, 1, 2, 17, 1000] {
            let mut a = Rng::new(5);
            (0..n).for_each(|_| {
                a.normal();
            });
            let mut b = Rng::new(5);
            b.skip_normals(n);
            assert_eq!(a.next_u64(), b.next_u64(), "{n}");
        }
    }
}
