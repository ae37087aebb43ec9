"""The token ids okapi's benches draw: okapi::model::Rng (splitmix64) `next_u64() % vocab`, so the
Python peers (compare.py, torch_step.py, gpu_peer.py) time the same batches. Standard library only."""

MASK64 = (1 << 64) - 1


def splitmix_tokens(seed, n, vocab):
    """okapi::model::Rng::new(seed).next_u64() % vocab, n times."""
    state = seed ^ 0x9E3779B97F4A7C15
    out = []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        z ^= z >> 31
        out.append(z % vocab)
    return out
