//! `okapi-train demo`: the whole SFT path on the bundled multilingual data, on the CPU by
//! default — train a tokenizer, init the `tiny` LLaMA, fine-tune on every language, show the
//! loss falling and responses to held-out instructions in three scripts.

use super::train_flags::args_json;
use okapi_data::assets::{self, Asset};
use okapi_data::bpe::{save_tokenizer, train_bpe};
use okapi_data::template::{OKAPI_PROMPT_INPUT, OKAPI_PROMPT_NO_INPUT};
use okapi_data::{encode_example, load_instructions, InstructRecord, PromptTemplate, SftEncoding, Tokenizer};
use okapi_model::{preset_config, Arch, DType, Model};
use okapi_rlhf::{generate, run_sft, AdamWConfig, Sampling, ScheduleKind, TrainConfig};
use okapi_runtime::{Backend, BackendKind};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Working directory for the data, tokenizer and models
    #[arg(long, default_value = "okapi-demo")]
    pub out: PathBuf,
    /// Compute backend: auto, cpu, wgpu or cuda
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
    /// SFT epochs over the bundled data
    #[arg(long, default_value_t = 4)]
    pub epochs: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Languages whose last record is held out and answered at the end: Latin, Cyrillic, Han.
const SHOWCASE: [&str; 3] = ["vi", "ru", "zh"];
const VOCAB: usize = 3072;
const MAX_LEN: usize = 192;

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", p.display())
}

pub fn run(a: DemoArgs) -> Result<(), String> {
    run_on(super::cpu_backend(a.backend)?, &a)
}

fn run_on<B: Backend>(be: B, a: &DemoArgs) -> Result<(), String> {
    let t0 = Instant::now();
    let data_dir = a.out.join("data/sft");
    std::fs::create_dir_all(&data_dir).map_err(io(&data_dir))?;
    // 1. the bundled SFT data as Okapi files, minus the showcase languages' last records
    let mut files = Vec::new();
    let mut held_out: Vec<InstructRecord> = Vec::new();
    for Asset { lang, text, .. } in assets::SFT {
        let path = data_dir.join(format!("{lang}.json"));
        let mut recs: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| format!("bundled sft/{lang}.json: {e}"))?;
        if SHOWCASE.contains(lang) {
            let last = recs.pop().expect("bundled files are not empty");
            let field = |k: &str| last.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            held_out.push(InstructRecord { instruction: field("instruction"), input: field("input"), output: field("output"), lang: Some(lang.to_string()), id: None, origin: format!("sft/{lang}.json") });
        }
        std::fs::write(&path, serde_json::to_string_pretty(&recs).unwrap()).map_err(io(&path))?;
        files.push(path);
    }
    let (records, stats) = load_instructions(&files, None, true).map_err(|e| e.to_string())?;
    println!("okapi demo: {} languages, {} ({} held out)", assets::SFT.len(), stats.summary(), held_out.len());

    // 2. a byte-level BPE tokenizer on the data (and the prompt template it will encode)
    let mut texts: Vec<String> = records.iter().flat_map(|r| [r.instruction.clone(), r.input.clone(), r.output.clone()]).filter(|t| !t.is_empty()).collect();
    texts.extend([OKAPI_PROMPT_INPUT, OKAPI_PROMPT_NO_INPUT].iter().map(|s| s.to_string()));
    let tok_path = a.out.join("tokenizer.json");
    let bpe = train_bpe(&texts, VOCAB).map_err(|e| e.to_string())?;
    save_tokenizer(&bpe, &tok_path).map_err(|e| e.to_string())?;
    let tok = Tokenizer::load(&tok_path).map_err(|e| e.to_string())?;
    println!("tokenizer: byte-level BPE, {} tokens", tok.vocab_size());

    // 3. the tiny LLaMA, initialised as transformers does
    let mut cfg = preset_config(Arch::Llama, "tiny", Some(tok.vocab_size()), 512).map_err(|e| e.to_string())?;
    for (key, token) in [("bos_token_id", "<s>"), ("eos_token_id", "</s>"), ("pad_token_id", "<pad>")] {
        cfg.raw[key] = tok.token_to_id(token).expect("okapi tokenizers carry the special tokens").into();
    }
    let cfg = okapi_model::ModelConfig::from_value(cfg.raw.clone(), cfg.path.clone()).map_err(|e| e.to_string())?;
    let (eos, pad) = (cfg.eos_token_id.unwrap(), cfg.pad_token_id.unwrap());
    let model = Model::init(be.clone(), cfg, a.seed);
    let init_dir = a.out.join("init");
    model.save(&init_dir, DType::F32, okapi_model::DEFAULT_MAX_SHARD_BYTES, Some(&tok_path)).map_err(|e| e.to_string())?;
    println!("model: tiny LLaMA, {} parameters, on {}", model.n_params(), be.name());

    // 4. SFT on every language
    let tpl = PromptTemplate::okapi();
    let enc = SftEncoding { max_len: MAX_LEN, mask_prompt: true, eos };
    let mut examples = Vec::new();
    for r in &records {
        if let Some(e) = encode_example(&tok, &tpl, r, &enc).map_err(|e| e.to_string())? {
            examples.push(e);
        }
    }
    let train_cfg = TrainConfig {
        epochs: a.epochs,
        max_steps: None,
        batch_size: 8,
        grad_accum: 1,
        lr: 3e-3,
        schedule: ScheduleKind::Cosine,
        warmup_steps: 10,
        adam: AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.05 },
        max_grad_norm: 1.0,
        seed: a.seed,
        shuffle: true,
        eval_every: None,
        save_every: None,
        save_dtype: Some(DType::F32),
        log_every: 10,
        resume: None,
    };
    let sft_dir = a.out.join("sft");
    std::fs::create_dir_all(&sft_dir).map_err(io(&sft_dir))?;
    let extra = serde_json::json!({ "model": init_dir, "data": files, "max_len": MAX_LEN, "mask_prompt": true });
    super::sft::write_json(&sft_dir.join("args.json"), &args_json("demo sft", &train_cfg, extra))?;
    println!("sft: {} examples, {} epochs, batch 8, lr 3e-3 cosine; loss starts near ln V = {:.2}", examples.len(), a.epochs, (tok.vocab_size() as f64).ln());
    let summary = run_sft(model, &tok_path, examples, vec![], &train_cfg, &sft_dir, pad).map_err(|e| e.to_string())?;
    println!("sft: {} steps, loss {:.3} → {:.3}", summary.steps, summary.first_loss.unwrap_or(f64::NAN), summary.last_loss.unwrap_or(f64::NAN));

    // 5. held-out instructions in three scripts
    let tuned = Model::load(be, &sft_dir).map_err(|e| e.to_string())?;
    let prompts: Vec<Vec<u32>> = held_out.iter().map(|r| tok.encode(&tpl.prompt(&r.instruction, &r.input), true)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let gens = generate(&tuned, &prompts, &Sampling::greedy(48), Some(eos)).map_err(|e| e.to_string())?;
    for (r, g) in held_out.iter().zip(&gens) {
        let ids: Vec<u32> = g.tokens.iter().copied().filter(|&t| t != eos).collect();
        let text = tok.decode(&ids, true).map_err(|e| e.to_string())?;
        println!("\n[{}] ### Instruction: {}{}", r.lang.as_deref().unwrap_or("?"), r.instruction, if r.input.is_empty() { String::new() } else { format!("\n     ### Input: {}", r.input) });
        println!("     ### Response: {}", text.trim());
        println!("     (reference: {})", r.output);
    }
    println!("\ndemo finished in {:.0} s; models in {} (init/, sft/)", t0.elapsed().as_secs_f64(), a.out.display());
    Ok(())
}
