//! Frozen weights in bf16 (`--frozen-bf16`): the frozen blocks' linear weights are stored packed
//! and unpacked a block at a time. A packed model computes exactly what an f32 model with those
//! weights rounded to bf16 computes (logits, loss and every trainable gradient, bit for bit);
//! saving writes the rounded values; a resumed run and PPO's hydra reference stay bit-identical.

mod common;

use common::{fixture, short_sft, Scratch};
use okapi::kernels::reduce::bf16_bits;
use okapi::model::Model;
use okapi::rlhf::{lm_loss_and_grad, LossBufs};
use okapi::runtime::{Backend, CpuBackend, IGNORE_INDEX};

fn round_bf16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| f32::from_bits((bf16_bits(v) as u32) << 16)).collect()
}

/// Logits, loss and gradients of one step with the top `unfrozen` blocks training.
fn step(model: &Model<CpuBackend>, unfrozen: usize) -> (Vec<f32>, f64, Vec<Option<Vec<f32>>>) {
    let (b, t, v) = (2, 9, model.cfg.vocab_size);
    let mut rng = okapi::model::Rng::new(9);
    let ids: Vec<u32> = (0..b * t).map(|_| (rng.next_u64() % v as u64) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| if i % t == t - 1 { IGNORE_INDEX } else { ids[i + 1] }).collect();
    let mask = model.trainable_mask(Some(unfrozen)).unwrap();
    let (mut acts, mut scratch, mut grads) = (model.new_acts(b, t), model.new_scratch(b, t), model.new_grads(|i| mask[i]));
    let mut bufs = LossBufs::new(&model.be, b * t);
    model.forward(&mut acts, &ids, b, t).unwrap();
    let logits = model.be.read(&acts.logits, b * t * v);
    let (loss, _) = lm_loss_and_grad(model, &mut acts, &mut bufs, &targets, 0.1);
    model.backward(&mut acts, &mut scratch, &mut grads);
    let g = grads.bufs.iter().map(|g| g.as_ref().map(|g| model.be.read(g, model.be.buf_len(g)))).collect();
    (logits, loss, g)
}

#[test]
fn a_packed_model_computes_what_its_rounded_weights_compute() {
    for name in ["llama_gqa", "bloom_6h"] {
        let mut packed = Model::load(CpuBackend, &fixture(name)).unwrap();
        let mask = packed.trainable_mask(Some(1)).unwrap();
        let n = packed.freeze_in_bf16(&mask);
        assert!(n > 0, "{name}: nothing packed");
        // the same model with the packed weights rounded to bf16 but stored in f32
        let mut rounded = Model::load(CpuBackend, &fixture(name)).unwrap();
        let mut count = 0;
        for (i, &trains) in mask.iter().enumerate() {
            if packed.is_packed(i) {
                assert!(!trains, "{name}: a trainable weight was packed");
                let r = round_bf16(&rounded.host_value(i));
                assert_eq!(packed.host_value(i), r, "{name}: host_value of a packed weight is its bf16 rounding");
                rounded.set_host_value(i, &r);
                count += r.len();
            }
        }
        assert_eq!(count, n);
        let (la, lossa, ga) = step(&packed, 1);
        let (lb, lossb, gb) = step(&rounded, 1);
        assert!(la.iter().zip(&lb).all(|(x, y)| x.to_bits() == y.to_bits()), "{name}: logits");
        assert_eq!(lossa.to_bits(), lossb.to_bits(), "{name}: loss");
        assert_eq!(ga.iter().filter(|g| g.is_some()).count(), gb.iter().filter(|g| g.is_some()).count());
        for (i, (x, y)) in ga.iter().zip(&gb).enumerate() {
            if let (Some(x), Some(y)) = (x, y) {
                assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name}: gradient {i}");
            }
        }
        // the packed weights take half the bytes
        let bytes: usize = (0..packed.info.len()).filter(|&i| packed.is_packed(i)).map(|i| packed.be.buf_len(&packed.values[i])).sum();
        assert_eq!(bytes, n.div_ceil(2), "{name}: two bf16 per f32 slot (odd sizes rounded up per tensor)");
    }
}

fn sft(dir: &Scratch, out: &str, extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let args = [&["--max-steps", "4", "--batch-size", "2", "--max-len", "40", "--lr", "1e-3", "--no-shuffle", "--unfrozen-layers", "1", "--frozen-bf16", "--save-every", "2", "--save-dtype", "f32"][..], extra].concat();
    short_sft(&dir.root, "llama_gqa", &dir.root.join(out), &args, env)
}

#[test]
fn sft_with_frozen_bf16_saves_rounded_frozen_layers_and_resumes_bit_identically() {
    let dir = Scratch::new("frozen-bf16-sft");
    let o = sft(&dir, "full", &[], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("frozen weights (bf16)"), "the plan shows the bf16 part");
    // the frozen block 0 is saved as its bf16 rounding; the trained top block moved
    let before = Model::load(CpuBackend, &fixture("llama_gqa")).unwrap();
    let after = Model::load(CpuBackend, &dir.root.join("full")).unwrap();
    let q0 = before.info.iter().position(|p| p.name.contains("layers.0.self_attn.q_proj.weight")).unwrap();
    assert_eq!(after.host_value(q0), round_bf16(&before.host_value(q0)));
    let top = before.info.iter().position(|p| p.name.contains(&format!("layers.{}.self_attn.q_proj.weight", before.cfg.n_layers - 1))).unwrap();
    assert_ne!(after.host_value(top), before.host_value(top));
    // stopped after step 3, resumed from the step-2 checkpoint: the same final bytes
    let o = sft(&dir, "part", &[], &[("OKAPI_TEST_EXIT_AFTER_STEP", "3")]);
    assert!(!o.status.success());
    let part = dir.root.join("part");
    let o = sft(&dir, "part", &["--resume", part.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |d: &str| std::fs::read(dir.root.join(d).join("model.safetensors")).unwrap();
    assert!(read("full") == read("part"), "resumed run differs");
}
