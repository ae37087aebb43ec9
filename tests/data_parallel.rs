//! Data parallelism above the transport: SFT, reward and DPO trained by 2 and 3 ranks (threads of
//! this process, `ThreadGroup`) equal the single-process run with the same global batch — losses,
//! gradient norms and metrics per step within 1e-6 relative, parameters after the AdamW steps
//! within 5e-5 of each tensor's scale (the order of the sums is the only difference; see
//! [`param_tol`]) — and a failing rank fails the others naming it; eval items, `loglik`
//! requests and reward scores split across ranks give every rank every result, bit for bit the
//! single process's. The MPI engine runs the same code (`tests/mpi.rs`, with `--features mpi`).

mod common;

use common::fixture;
use okapi::data::{encode_group, load_rankings, LoglikRequest, PromptGroup, PromptTemplate, RecordFormat, SftEncoding, Tokenizer};
use okapi::rlhf::eval::harness::PairEncoder;
use okapi::rlhf::eval::prompts::QA_PROMPT;
use okapi::rlhf::eval::{score_items_streaming, ItemRequest, ItemScore, ScoreOptions};
use okapi::rlhf::loglik::score_loglik_metered;
use okapi::model::Model;
use okapi::rlhf::trainer::train_data_parallel;
use okapi::rlhf::sft::SftObjective;
use okapi::rlhf::{load_sft_examples, DpoObjective, RewardObjective, TrainConfig, TrainSummary};
use okapi::runtime::{Collective, CpuBackend, SingleProcess, ThreadGroup};
use std::time::Duration;

/// Training on `world` ranks, each a thread running `run(rank's collective)`; the runs' results in
/// rank order.
fn on_ranks<T: Send + 'static>(world: usize, run: fn(&'static dyn Collective) -> T) -> Vec<T> {
    // (leaked: a trainer keeps its collective for the process's life, as the CLI's is)
    let handles: Vec<_> = ThreadGroup::new(world, Duration::from_secs(120)).into_iter().map(|g| std::thread::spawn(move || run(Box::leak(Box::new(g))))).collect();
    handles.into_iter().map(|h| h.join().expect("a rank panicked")).collect()
}

/// The per-step losses and the parameters after the run.
struct Outcome {
    losses: Vec<f64>,
    grad_norms: Vec<f64>,
    extras: Vec<serde_json::Map<String, serde_json::Value>>,
    params: Vec<Vec<f32>>,
}

fn outcome(model: Model<CpuBackend>, s: TrainSummary) -> Outcome {
    let losses = s.history.iter().map(|l| l["loss"].as_f64().unwrap()).collect();
    let grad_norms = s.history.iter().map(|l| l["grad_norm"].as_f64().unwrap()).collect();
    let extras = s.history.iter().map(|l| l.as_object().unwrap().iter().filter(|(k, _)| !k.starts_with("time_") && !matches!(k.as_str(), "elapsed_s" | "tokens_per_s" | "loss" | "grad_norm" | "lr")).map(|(k, v)| (k.clone(), v.clone())).collect()).collect();
    let params = (0..model.info.len()).map(|i| model.host_value(i)).collect();
    Outcome { losses, grad_norms, extras, params }
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// The largest parameter difference between two runs, relative to each tensor's largest value.
fn worst_param_diff(a: &Outcome, b: &Outcome) -> f32 {
    common::worst_rel_diff(a.params.iter().map(Vec::as_slice), b.params.iter().map(Vec::as_slice))
}

/// The data-parallel runs equal the single one: losses and gradient norms ≤ 1e-6 relative per
/// step, metrics to 1e-6 (relative, or absolute below 1: margins are differences), every rank the
/// same model bit for bit, and its parameters as close to the single run's as `param_tol`.
fn assert_same(what: &str, single: &Outcome, ranks: &[Outcome], param_tol: f32) {
    assert_same_with(what, single, ranks, param_tol, 1e-6)
}

/// [`assert_same`] with the metrics' tolerance `metric_tol`.
fn assert_same_with(what: &str, single: &Outcome, ranks: &[Outcome], param_tol: f32, metric_tol: f64) {
    for (r, o) in ranks.iter().enumerate() {
        assert_eq!(o.losses.len(), single.losses.len(), "{what} rank {r}: steps");
        for (k, (a, b)) in o.losses.iter().zip(&single.losses).enumerate() {
            assert!(rel(*a, *b) <= 1e-6, "{what} rank {r} step {}: loss {a} vs {b}", k + 1);
        }
        for (k, (a, b)) in o.grad_norms.iter().zip(&single.grad_norms).enumerate() {
            assert!(rel(*a, *b) <= 1e-6, "{what} rank {r} step {}: gradient norm {a} vs {b}", k + 1);
        }
        for (k, (a, b)) in o.extras.iter().zip(&single.extras).enumerate() {
            assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{what} step {}", k + 1);
            for (key, x) in a {
                let (x, y) = (x.as_f64().unwrap(), b[key].as_f64().unwrap());
                assert!((x - y).abs() <= metric_tol * y.abs().max(1.0), "{what} rank {r} step {} {key}: {x} vs {y}", k + 1);
            }
        }
        let worst = worst_param_diff(o, single);
        eprintln!("{what} rank {r}: parameters within {worst:.2e} of one process (bound {param_tol:.2e})");
        assert!(worst <= param_tol, "{what} rank {r}: parameters {worst:e} from one process's (bound {param_tol:e})");
    }
    for o in &ranks[1..] {
        assert_eq!(o.params, ranks[0].params, "{what}: the ranks' models differ");
    }
}

/// The parameter tolerance of a data-parallel run, relative to each tensor's largest value:
/// AdamW divides each gradient by its own running magnitude, so an element whose gradient nearly
/// cancels moves by more than 1e-6 under any change of summation order — reordering the same sums
/// in one process (`reordered`: the same global batches in micro-batches of one item) moves the
/// parameters by 1e-6 to 1e-5 here, printed for the record. A rank that trained on its share only,
/// or a tensor left out of the all-reduce, moves them by ~lr = 1e-3.
fn param_tol(what: &str, single: &Outcome, reordered: &Outcome) -> f32 {
    eprintln!("{what}: reordering the sums in one process moves the parameters by {:.2e}", worst_param_diff(reordered, single));
    5e-5
}

// ---- SFT: 7 examples, micro-batches of 3 (odd shares), two accumulated per step ------------------

fn sft_cfg() -> TrainConfig {
    TrainConfig { max_steps: Some(3), batch_size: 3, grad_accum: 2, lr: 1e-3, warmup_steps: 0, max_len: 60, val_fraction: 0.0, seed: 5, ..TrainConfig::sft() }
}

fn sft_run(comm: &'static dyn Collective) -> Outcome {
    sft_run_with(comm, sft_cfg())
}

fn sft_run_with(comm: &'static dyn Collective, cfg: TrainConfig) -> Outcome {
    let dir = fixture("llama_gqa");
    let tok = Tokenizer::load(&dir).unwrap();
    let model = Model::load(CpuBackend, &dir).unwrap();
    let tmp = std::env::temp_dir().join(format!("okapi-dp-sft-{}-{}", std::process::id(), comm.rank()));
    std::fs::create_dir_all(&tmp).unwrap();
    let data = tmp.join("sft.jsonl");
    let extra = "{\"instruction\": \"Đếm đến năm.\", \"input\": \"\", \"output\": \"một hai ba bốn năm\"}\n{\"instruction\": \"Скажи привет\", \"input\": \"\", \"output\": \"Привет!\"}\n";
    std::fs::write(&data, format!("{}{extra}", common::SHORT_SFT_RECORDS)).unwrap();
    let tpl = tmp.join("template.json");
    std::fs::write(&tpl, common::SHORT_TEMPLATE).unwrap();
    let format = RecordFormat::prompt_only(PromptTemplate::load(&tpl).unwrap());
    let loaded = load_sft_examples(&[data], None, &format, &tok, 2, &cfg).unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
    assert_eq!(loaded.examples.len(), 7);
    let pad = model.cfg.pad_token_id.unwrap_or(2);
    let mut obj = SftObjective::new(&model, loaded.examples, vec![], cfg.batch_size, pad);
    let (model, s) = train_data_parallel(model, &mut obj, &cfg, None, comm).unwrap();
    outcome(model, s)
}

#[test]
fn sft_on_two_and_three_ranks_equals_one_process() {
    let single = sft_run(&SingleProcess);
    let tol = param_tol("sft", &single, &sft_run_with(&SingleProcess, TrainConfig { batch_size: 1, grad_accum: 6, ..sft_cfg() }));
    assert_same("sft 2 ranks", &single, &on_ranks(2, sft_run), tol);
    assert_same("sft 3 ranks", &single, &on_ranks(3, sft_run), tol);
}

// ---- reward and DPO: the ranking fixture's groups, micro-batches of 2 ---------------------------

fn groups() -> Vec<PromptGroup> {
    let tok = Tokenizer::load(&fixture("llama_gqa")).unwrap();
    let (recs, _) = load_rankings(&[fixture("ranking_data.json")], None).unwrap();
    let enc = SftEncoding { max_len: 768, mask_prompt: true, eos: 2 };
    let gs: Vec<PromptGroup> = recs.iter().map(|r| encode_group(&tok, &PromptTemplate::okapi(), r, &enc).unwrap().unwrap()).collect();
    // twice over, so steps have shares of 1 and 2 groups with different pair counts
    gs.iter().chain(&gs).cloned().collect()
}

fn pair_cfg() -> TrainConfig {
    TrainConfig { max_steps: Some(3), batch_size: 2, grad_accum: 2, lr: 1e-3, warmup_steps: 0, val_fraction: 0.0, seed: 9, ..TrainConfig::sft() }
}

fn reward_run(comm: &'static dyn Collective) -> Outcome {
    reward_run_with(comm, pair_cfg())
}

fn reward_run_with(comm: &'static dyn Collective, cfg: TrainConfig) -> Outcome {
    let model = Model::load_reward(CpuBackend, &fixture("llama_gqa"), 0).unwrap();
    let mut obj = RewardObjective::new(&model, groups(), vec![], cfg.batch_size, 3, 0.0);
    let (model, s) = train_data_parallel(model, &mut obj, &cfg, None, comm).unwrap();
    outcome(model, s)
}

fn dpo_run(comm: &'static dyn Collective) -> Outcome {
    dpo_run_with(comm, pair_cfg())
}

fn dpo_run_with(comm: &'static dyn Collective, cfg: TrainConfig) -> Outcome {
    let model = Model::load(CpuBackend, &fixture("llama_gqa")).unwrap();
    let mut obj = DpoObjective::new(&model, groups(), vec![], cfg.batch_size, 3, 0.1).unwrap();
    let (model, s) = train_data_parallel(model, &mut obj, &cfg, None, comm).unwrap();
    outcome(model, s)
}

#[test]
fn reward_and_dpo_on_two_and_three_ranks_equal_one_process() {
    let one_item = || TrainConfig { batch_size: 1, grad_accum: 4, ..pair_cfg() };
    let single = reward_run(&SingleProcess);
    assert!(single.extras[0]["pairs"].as_u64().unwrap() > 0);
    let tol = param_tol("reward", &single, &reward_run_with(&SingleProcess, one_item()));
    assert_same("reward 2 ranks", &single, &on_ranks(2, reward_run), tol);
    assert_same("reward 3 ranks", &single, &on_ranks(3, reward_run), tol);
    let single = dpo_run(&SingleProcess);
    let tol = param_tol("dpo", &single, &dpo_run_with(&SingleProcess, one_item()));
    assert_same("dpo 2 ranks", &single, &on_ranks(2, dpo_run), tol);
    assert_same("dpo 3 ranks", &single, &on_ranks(3, dpo_run), tol);
}

/// A rank whose training fails (here: its data cannot train) makes the others fail at their
/// next collective naming it, instead of waiting forever.
#[test]
fn a_failing_rank_fails_the_others_naming_it() {
    let errors = on_ranks(2, |comm| {
        let model = Model::load_reward(CpuBackend, &fixture("llama_gqa"), 0).unwrap();
        let cfg = pair_cfg();
        // rank 1 has no data: its trainer refuses to start
        let train = if comm.rank() == 1 { vec![] } else { groups() };
        let mut obj = RewardObjective::new(&model, train, vec![], cfg.batch_size, 3, 0.0);
        train_data_parallel(model, &mut obj, &cfg, None, comm).err().map(|e| e.to_string())
    });
    let rank1 = errors[1].as_deref().unwrap();
    assert!(rank1.contains("no training data"), "{rank1}");
    let rank0 = errors[0].as_deref().unwrap();
    assert!(rank0.starts_with("rank 1 of 2 failed: ") && rank0.contains("no training data"), "{rank0}");
}


// ---- the command line without MPI ----------------------------------------------------------------

fn okapi(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_okapi-train")).args(args).envs(env.iter().copied()).output().unwrap()
}

/// Commands that do not run data-parallel refuse to start as one of several ranks; `launch`
/// checks its rank count.
#[test]
fn only_training_and_scoring_commands_run_as_ranks() {
    let o = okapi(&["merge", "--model", "m", "--adapter", "a", "--out", "o"], &[("OMPI_COMM_WORLD_SIZE", "2")]);
    common::one_error_line(&o, &["okapi-train merge was started as one of 2 ranks", "data-parallel runs are built for sft, reward, dpo, ppo, grpo, rloo, eval, loglik, score"]);
    let o = okapi(&["generate", "--model", "m", "--instruction", "hi"], &[("PMI_SIZE", "3")]);
    common::one_error_line(&o, &["okapi-train generate was started as one of 3 ranks"]);
    common::one_error_line(&okapi(&["launch", "--nproc", "0", "--", "sft"], &[]), &["--nproc 0: expected at least 1 rank"]);
}

/// A build without the `mpi` feature says how to get one when it is started by an MPI launcher
/// or asked to launch ranks, instead of training N copies of the same run.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_ranks_in_one_line() {
    let o = okapi(&["sft", "--model", "m", "--data", "x.json", "--out", "o"], &[("OMPI_COMM_WORLD_SIZE", "2")]);
    common::one_error_line(&o, &["one of 2 ranks", "built without MPI", "--features mpi"]);
    let o = okapi(&["launch", "--nproc", "2", "--", "sft", "--model", "m"], &[]);
    common::one_error_line(&o, &["built without MPI", "--features mpi"]);
    assert!(!std::path::Path::new("o").exists());
}

// ---- ZeRO-1: the AdamW state sharded, the same numbers -----------------------------------------

/// SFT as one rank with `zero`, rank 0 writing into `out` (a checkpoint at the last step).
fn sft_zero_run(comm: &'static dyn Collective, zero: u8, out: &std::path::Path) -> Outcome {
    sft_zero_result(comm, zero, out).unwrap()
}

fn sft_zero_result(comm: &'static dyn Collective, zero: u8, out: &std::path::Path) -> Result<Outcome, okapi::rlhf::TrainError> {
    let dir = fixture("llama_gqa");
    let tok = Tokenizer::load(&dir).unwrap();
    let model = Model::load(CpuBackend, &dir).unwrap();
    let cfg = TrainConfig { zero, save_every: Some(3), ..sft_cfg() };
    let tpl = PromptTemplate::from_json(common::SHORT_TEMPLATE, std::path::Path::new("template.json")).unwrap();
    let tmp = out.with_extension(format!("data-{}", comm.rank()));
    std::fs::create_dir_all(&tmp).unwrap();
    let data = tmp.join("sft.jsonl");
    std::fs::write(&data, common::SHORT_SFT_RECORDS).unwrap();
    let loaded = load_sft_examples(&[data], None, &RecordFormat::prompt_only(tpl), &tok, 2, &cfg).unwrap();
    let pad = model.cfg.pad_token_id.unwrap_or(2);
    let mut obj = SftObjective::new(&model, loaded.examples, vec![], cfg.batch_size, pad);
    let run_dir = (comm.rank() == 0).then_some(okapi::rlhf::RunDir { dir: out, tokenizer: None, tensorboard: None });
    let (model, s) = train_data_parallel(model, &mut obj, &cfg, run_dir, comm)?;
    Ok(outcome(model, s))
}

/// The checkpoint's optimizer file is written as the ranks hand in their moments. When rank 0
/// cannot write the checkpoint at all, the job still ends at once on every rank (rank 1 done,
/// or with rank 0's line): none waits out the ThreadGroup's 20 s timeout in the gather (rank 0
/// hands its share through before it fails, and its failure aborts the group).
#[test]
fn a_checkpoint_rank_0_cannot_write_strands_no_rank() {
    let scratch = common::Scratch::new("zero-fail");
    let out = scratch.root.join("out");
    // the leftover temporary cannot be trashed: its trash's name is taken by a file
    std::fs::create_dir_all(out.join("checkpoint.tmp")).unwrap();
    std::fs::write(out.join("checkpoint.tmp.trash"), b"in the way").unwrap();
    let started = std::time::Instant::now();
    let handles: Vec<_> = ThreadGroup::new(2, Duration::from_secs(20)).into_iter().map(|g| {
        let o = out.clone();
        std::thread::spawn(move || sft_zero_result(Box::leak(Box::new(g)), 1, &o).map(|_| ()).map_err(|e| e.to_string()))
    }).collect();
    let results: Vec<Result<(), String>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let e = results[0].as_ref().expect_err("rank 0 cannot write its checkpoint");
    assert!(e.contains("checkpoint.tmp.trash"), "rank 0: {e}");
    // rank 1 finished (the checkpoint is the last step) or heard rank 0's failure first
    if let Err(e1) = &results[1] {
        assert!(e1.contains("rank 0 of 2 failed") && e1.contains("checkpoint.tmp.trash"), "rank 1: {e1}");
    }
    assert!(started.elapsed() < Duration::from_secs(15), "a rank waited {:?}", started.elapsed());
    assert!(!out.join("checkpoint").exists(), "a checkpoint appeared");
}

/// `--zero 1` on 2 and 3 ranks: the parameters after the steps are bit-identical to `--zero 0`
/// on as many ranks (each tensor is stepped by its owner with the same arithmetic, and the new
/// values exchanged exactly), and the checkpoint's optimizer file — the state gathered from the
/// ranks — is byte-identical too.
#[test]
fn zero_1_gives_the_same_run_and_checkpoint_bit_for_bit() {
    let scratch = common::Scratch::new("zero");
    for world in [2usize, 3] {
        let runs: Vec<(Vec<Outcome>, std::path::PathBuf)> = [0u8, 1]
            .iter()
            .map(|&zero| {
                let out = scratch.root.join(format!("w{world}-z{zero}"));
                let o = out.clone();
                let handles: Vec<_> = ThreadGroup::new(world, Duration::from_secs(120)).into_iter().map(|g| {
                    let o = o.clone();
                    std::thread::spawn(move || sft_zero_run(Box::leak(Box::new(g)), zero, &o))
                }).collect();
                (handles.into_iter().map(|h| h.join().unwrap()).collect(), out)
            })
            .collect();
        let ((z0, d0), (z1, d1)) = (&runs[0], &runs[1]);
        for r in 0..world {
            assert_eq!(z1[r].params, z0[r].params, "{world} ranks, rank {r}: ZeRO-1 parameters differ from ZeRO-0's");
            assert_eq!(z1[r].losses, z0[r].losses);
        }
        let opt = |d: &std::path::Path| std::fs::read(d.join("checkpoint/optimizer.safetensors")).unwrap();
        assert_eq!(opt(d1), opt(d0), "{world} ranks: the gathered AdamW state differs");
    }
}

/// The moments are really split: each trainable tensor has exactly one owner, the shares are
/// balanced, and an owned-only optimizer allocates moments for its tensors alone.
#[test]
fn zero_1_owners_split_the_moments() {
    let model = Model::load(CpuBackend, &fixture("llama_gqa")).unwrap();
    let grads = model.new_grads(|_| true);
    let total: usize = model.info.iter().map(|p| p.numel()).sum();
    for world in [2usize, 3] {
        let owners = okapi::rlhf::optim::zero::owners(&model, &grads, world);
        let mut held = 0;
        for rank in 0..world {
            let owned: Vec<bool> = owners.iter().map(|o| *o == Some(rank)).collect();
            let opt = okapi::rlhf::Optimizer::new_owned(&model, &grads, okapi::rlhf::AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 }, &owned);
            let mine: usize = (0..model.info.len()).filter(|&i| opt.m[i].is_some()).map(|i| model.info[i].numel()).sum();
            assert!(mine * world <= total * 2, "{world} ranks: rank {rank} holds {mine} of {total}");
            held += mine;
        }
        assert_eq!(held, total, "{world} ranks: every element's moments on exactly one rank");
    }
}

// ---- eval, loglik and score: the items split across ranks, every result on every rank ----------

/// Items for the scorer on bloom_6h: two groups sharing a long prefix (TruthfulQA's QA prompt, a
/// few-shot block), loose items in several scripts, and one item that cannot be scored (an empty
/// continuation).
fn eval_items() -> Vec<ItemRequest> {
    let it = |c: String, conts: &[&str]| ItemRequest { context: c, continuations: conts.iter().map(|s| s.to_string()).collect() };
    let shots = "Question: Which gas do plants take in?\nAnswer: carbon dioxide\n\nQuestion: What is the boiling point of water at sea level?\nAnswer: 100 °C\n\n";
    let mut items = Vec::new();
    for q in ["What happens if you crack your knuckles?", "Tôi yêu ai?", "Почему небо голубое?", "¿Dónde está Lima?", "Kya baat hai?"] {
        items.push(it(format!("{QA_PROMPT}\n\nQ: {q}\nA:"), &[" Nothing.", " Arthritis in old age.", " Не знаю."]));
        items.push(it(format!("{shots}Question: {q}\nAnswer:"), &[" yes", " no, never", " 42"]));
    }
    items.push(it("Question: Nước đóng băng ở nhiệt độ nào?\nAnswer:".into(), &[" 0 độ C", " 100 độ C", " 50 độ C"]));
    items.push(it("Question: Сколько ног у паука?\nAnswer:".into(), &[" Шесть", " Восемь", " Десять", " Четыре"]));
    items.push(it(String::new(), &[" The weather is nice today.", " x"]));
    items.push(it("北京是中国的".into(), &["首都。", ""]));
    items.push(it("Question: القاهرة هي عاصمة؟\nAnswer:".into(), &[" مصر", " فرنسا"]));
    items
}

fn score_eval_items(comm: &'static dyn Collective, model: &str, items: &[ItemRequest], opts: ScoreOptions) -> Vec<(usize, ItemScore)> {
    let dir = fixture(model);
    let (model, tok) = (Model::load(CpuBackend, &dir).unwrap(), Tokenizer::load(&dir).unwrap());
    let enc = PairEncoder::v03(&model.cfg).unwrap();
    let mut seen = Vec::new();
    score_items_streaming(&model, &tok, items, opts, &enc, comm, &mut |done| {
        seen.extend(done);
        Ok(())
    })
    .unwrap();
    seen
}

/// Every item's score, by index (each exactly once).
fn by_index(seen: Vec<(usize, ItemScore)>, n: usize) -> Vec<ItemScore> {
    let mut out: Vec<Option<ItemScore>> = vec![None; n];
    for (i, sc) in seen {
        assert!(out[i].replace(sc).is_none(), "item {i} handed out twice");
    }
    out.into_iter().enumerate().map(|(i, s)| s.unwrap_or_else(|| panic!("item {i} never handed out"))).collect()
}

/// One rank's scoring: (item index, score) as handed out.
type ScoringRun = fn(&'static dyn Collective) -> Vec<(usize, ItemScore)>;

fn eval_cached(comm: &'static dyn Collective) -> Vec<(usize, ItemScore)> {
    score_eval_items(comm, "bloom_6h", &eval_items(), ScoreOptions { batch_size: 2, cache: true, chunk: 16 })
}

fn eval_from_scratch(comm: &'static dyn Collective) -> Vec<(usize, ItemScore)> {
    score_eval_items(comm, "bloom_6h", &eval_items(), ScoreOptions { batch_size: 3, cache: false, chunk: 0 })
}

/// llama_gqa's 64-token window: the long item is scored from scratch beside the fast path.
fn eval_mixed_paths(comm: &'static dyn Collective) -> Vec<(usize, ItemScore)> {
    let long = "Once upon a time, in a small village near the sea, there lived an old fisherman. Ngày xưa, có một ông lão đánh cá. Каждое утро он выходил в море.";
    let mut items = eval_items().split_off(10);
    items.push(ItemRequest { context: long.into(), continuations: vec![" и возвращался вечером.".into(), " 好".into()] });
    score_eval_items(comm, "llama_gqa", &items, ScoreOptions { batch_size: 2, cache: true, chunk: 5 })
}

/// The scorer on 2 and 3 ranks hands every rank every item's result, bit for bit the single
/// process's: the groups, the loose items, the items from scratch and the invalid one.
#[test]
fn eval_items_on_two_and_three_ranks_equal_one_process_bit_for_bit() {
    let cases: [(&str, ScoringRun); 3] = [("fast path", eval_cached), ("from scratch", eval_from_scratch), ("both paths", eval_mixed_paths)];
    for (what, run) in cases {
        let single = run(&SingleProcess);
        let n = single.len();
        let single = by_index(single, n);
        assert!(single.iter().any(|s| matches!(s, ItemScore::Invalid(_))), "{what}: the invalid item");
        assert!(single.iter().filter(|s| matches!(s, ItemScore::Scored { .. })).count() >= 5, "{what}: items scored");
        if what == "both paths" {
            assert!(single.iter().any(|s| matches!(s, ItemScore::Scored { truncated: true, .. })), "{what}: the long item is truncated");
        }
        for world in [2, 3] {
            for (rank, got) in on_ranks(world, run).into_iter().enumerate() {
                let got = by_index(got, n);
                for (i, (g, w)) in got.iter().zip(&single).enumerate() {
                    let bits = |s: &ItemScore| match s {
                        ItemScore::Scored { logliks, truncated } => (logliks.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), *truncated, String::new()),
                        ItemScore::Invalid(m) => (Vec::new(), false, m.clone()),
                    };
                    assert_eq!(bits(g), bits(w), "{what}, {world} ranks, rank {rank}, item {i}: {g:?} vs {w:?}");
                }
            }
        }
    }
}

fn loglik_requests() -> Vec<LoglikRequest> {
    eval_items().into_iter().flat_map(|it| it.continuations.into_iter().filter(|c| !c.is_empty()).map(move |c| LoglikRequest { context: it.context.clone(), continuation: c })).collect()
}

fn loglik_run(comm: &'static dyn Collective) -> Vec<(u64, bool)> {
    let dir = fixture("llama_gqa");
    let (model, tok) = (Model::load(CpuBackend, &dir).unwrap(), Tokenizer::load(&dir).unwrap());
    let mut meter = okapi::rlhf::progress::Meter::silent();
    score_loglik_metered(&model, &tok, &loglik_requests(), 4, comm, &mut meter).unwrap().into_iter().map(|r| (r.loglik.to_bits(), r.is_greedy)).collect()
}

fn rewards_run(comm: &'static dyn Collective) -> Vec<Vec<u32>> {
    let model = Model::load_reward(CpuBackend, &fixture("llama_gqa"), 0).unwrap();
    let gs = groups();
    let mut bufs = okapi::rlhf::reward::RewardBufs::new(&model, &gs, 3, 0, 0.0);
    let mut meter = okapi::rlhf::progress::Meter::silent();
    bufs.rewards_metered(&model, &gs, 3, comm, &mut meter).unwrap().into_iter().map(|r| r.iter().map(|x| x.to_bits()).collect()).collect()
}

/// `loglik` requests and reward-model scores on 2 and 3 ranks: every rank returns every result,
/// in order, bit for bit the single process's.
#[test]
fn loglik_and_rewards_on_two_and_three_ranks_equal_one_process_bit_for_bit() {
    let (want_ll, want_rw) = (loglik_run(&SingleProcess), rewards_run(&SingleProcess));
    assert_eq!(want_ll.len(), loglik_requests().len());
    assert_eq!(want_rw.len(), groups().len());
    for world in [2, 3] {
        for got in on_ranks(world, loglik_run) {
            assert_eq!(got, want_ll, "loglik on {world} ranks");
        }
        for got in on_ranks(world, rewards_run) {
            assert_eq!(got, want_rw, "rewards on {world} ranks");
        }
    }
}

// ---- ZeRO-2: the blocks' gradients sharded too -------------------------------------------------

/// SFT with micro-batches of 4 (7 examples: shares of 2 + 2 and 2 + 1 + 1, the epoch's last
/// micro-batch 3), two accumulated per step.
fn sft_zero2_cfg(zero: u8) -> TrainConfig {
    TrainConfig { batch_size: 4, zero, ..sft_cfg() }
}

fn sft_zero2_run(comm: &'static dyn Collective) -> Outcome {
    sft_run_with(comm, sft_zero2_cfg(2))
}

fn reward_zero2_run(comm: &'static dyn Collective) -> Outcome {
    reward_run_with(comm, TrainConfig { zero: 2, ..pair_cfg() })
}

fn dpo_zero2_run(comm: &'static dyn Collective) -> Outcome {
    dpo_run_with(comm, TrainConfig { zero: 2, ..pair_cfg() })
}

/// `--zero 2` on 2 and 3 ranks equals one process as `--zero 0` does (the gradients reach their
/// owners in another order of sums: per micro-batch, then accumulated), with accumulation over
/// micro-batches, for SFT, the reward model and DPO.
#[test]
fn zero_2_on_two_and_three_ranks_equals_one_process() {
    let single = sft_run_with(&SingleProcess, sft_zero2_cfg(0));
    let tol = param_tol("sft", &single, &sft_run_with(&SingleProcess, TrainConfig { batch_size: 1, grad_accum: 8, ..sft_zero2_cfg(0) }));
    assert_same("sft zero 2, 2 ranks", &single, &on_ranks(2, sft_zero2_run), tol);
    assert_same("sft zero 2, 3 ranks", &single, &on_ranks(3, sft_zero2_run), tol);
    assert_same("reward zero 2, 2 ranks", &reward_run(&SingleProcess), &on_ranks(2, reward_zero2_run), 5e-5);
    // DPO's rewards after a step are log-ratio sums read through parameters the reordered sums
    // moved: reordering the same sums in one process (micro-batches of one pair) moves them by
    // up to 7.6e-7 here; the losses and gradient norms stay within 1e-6
    assert_same_with("dpo zero 2, 2 ranks", &dpo_run(&SingleProcess), &on_ranks(2, dpo_zero2_run), 5e-5, 5e-6);
}

/// A micro-batch that leaves a rank without items would leave it out of the backward's
/// reduces: refused in one line before training.
#[test]
fn zero_2_refuses_micro_batches_smaller_than_the_world() {
    fn small(comm: &'static dyn Collective) -> String {
        let model = Model::load(CpuBackend, &fixture("llama_gqa")).unwrap();
        let mut obj = RewardObjective::new(&model, groups(), vec![], 2, 3, 0.0);
        let cfg = TrainConfig { zero: 2, batch_size: 2, ..pair_cfg() };
        train_data_parallel(model, &mut obj, &cfg, None, comm).err().map(|e| e.to_string()).unwrap_or_default()
    }
    for e in on_ranks(3, small) {
        assert!(e.contains("--zero: 2 on 3 ranks needs every micro-batch to give each rank an item: --batch-size 2 is smaller than 3"), "{e}");
    }
}

/// Installed on rank r of N, the gradient hook leaves that rank buffers for its own share of
/// the blocks' tensors and for every tensor outside the blocks — the rest are lent during the
/// backward.
#[test]
fn zero_2_keeps_a_ranks_share_of_the_block_gradients() {
    let model = Model::load(CpuBackend, &fixture("llama_gqa")).unwrap();
    let in_blocks: std::collections::HashSet<usize> = model.blocks.iter().flat_map(|b| b.params()).collect();
    let block_total: usize = in_blocks.iter().map(|&i| model.info[i].numel()).sum();
    for world in [2usize, 3] {
        let mut kept = 0;
        for (rank, g) in ThreadGroup::new(world, Duration::from_secs(10)).into_iter().enumerate() {
            let mut grads = model.new_grads(|_| true);
            let owners = okapi::rlhf::optim::zero::owners(&model, &grads, world);
            okapi::rlhf::grad_shards::install(&model, &mut grads, owners.clone(), Box::leak(Box::new(g)));
            for (i, (buf, owner)) in grads.bufs.iter().zip(&owners).enumerate() {
                let held = buf.is_some();
                assert_eq!(held, !in_blocks.contains(&i) || *owner == Some(rank), "{world} ranks, rank {rank}, tensor {}", model.info[i].name);
                if held && in_blocks.contains(&i) {
                    kept += model.info[i].numel();
                }
            }
            assert!(grads.trainable.iter().all(|&t| t), "every tensor still trains");
        }
        assert_eq!(kept, block_total, "{world} ranks: each block gradient on exactly one rank");
    }
}

