//! lm-evaluation-harness `loglikelihood` requests (v0.3 semantics, which Okapi's fork uses):
//! context and continuation are tokenized separately without special tokens (an empty
//! context becomes the EOS token), concatenated, and the last `max_length + 1` tokens kept;
//! loglik is the sum of the continuation tokens' log-probabilities, `is_greedy` whether each
//! continuation token is the argmax. [`score_encoded`] scores pairs already tokenized (harness
//! v0.4's pairing: `eval::harness::PairEncoder`) the same way.

use crate::progress::Meter;
use okapi_data::{DataError, LoglikRequest, Tokenizer};
use okapi_model::{Model, ModelError};
use okapi_runtime::collective::{all_gather_lists_f64, dealt_steps};
use okapi_runtime::{Backend, Collective, SingleProcess, IGNORE_INDEX};

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LoglikResult {
    pub loglik: f64,
    pub is_greedy: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Comm(#[from] okapi_runtime::CommError),
    #[error("{0}")]
    Other(String),
}

/// A request as model inputs: `input` (the window minus its last token) and how many of its
/// last positions predict continuation tokens.
struct Encoded {
    input: Vec<u32>,
    targets: Vec<u32>,
    n_cont: usize,
}

fn encode(tok: &Tokenizer, req: &LoglikRequest, eos: u32, max_length: usize) -> Result<Encoded, DataError> {
    let ctx = if req.context.is_empty() { vec![eos] } else { tok.encode(&req.context, false)? };
    let cont = tok.encode(&req.continuation, false)?;
    Ok(window(&ctx, &cont, max_length))
}

/// `(ctx + cont)[-(max_length+1):]` as model input and targets.
fn window(ctx: &[u32], cont: &[u32], max_length: usize) -> Encoded {
    let mut whole = ctx.to_vec();
    whole.extend_from_slice(cont);
    let window = &whole[whole.len().saturating_sub(max_length + 1)..];
    let input = window[..window.len() - 1].to_vec();
    let n_cont = cont.len().min(input.len());
    Encoded { targets: window[1..].to_vec(), input, n_cont }
}

/// Scores requests in batches of `batch_size`, longest first (less padding); results come back
/// in request order. Right padding cannot change a result: positions only see their past.
pub fn score_loglik<B: Backend>(model: &Model<B>, tok: &Tokenizer, reqs: &[LoglikRequest], batch_size: usize) -> Result<Vec<LoglikResult>, ScoreError> {
    score_loglik_metered(model, tok, reqs, batch_size, &SingleProcess, &mut Meter::silent())
}

/// [`score_loglik`], counting the requests on `meter` as their batches finish.
pub fn score_loglik_metered<B: Backend>(model: &Model<B>, tok: &Tokenizer, reqs: &[LoglikRequest], batch_size: usize, comm: &dyn Collective, meter: &mut Meter) -> Result<Vec<LoglikResult>, ScoreError> {
    let eos = model.cfg.eos_token_id.ok_or_else(|| ScoreError::Other(format!("{}: `eos_token_id` is needed to score an empty context", model.cfg.path.display())))?;
    let max_length = model.cfg.max_length();
    let enc: Vec<Encoded> = reqs.iter().map(|r| encode(tok, r, eos, max_length)).collect::<Result<_, _>>()?;
    score_windows(model, &enc, batch_size, comm, meter)
}

/// Scores (context, continuation) token pairs (each continuation non-empty) with the window
/// `max_length`, as [`score_loglik`] scores its requests once encoded.
pub fn score_encoded<B: Backend>(model: &Model<B>, pairs: &[(&[u32], &[u32])], max_length: usize, batch_size: usize) -> Result<Vec<LoglikResult>, ScoreError> {
    let enc: Vec<Encoded> = pairs.iter().map(|(c, x)| window(c, x, max_length)).collect();
    score_windows(model, &enc, batch_size, &SingleProcess, &mut Meter::silent())
}

/// The requests in batches of `batch_size`, longest first. With several ranks (`comm`) the
/// batches are dealt to the ranks in steps and every step's results gathered, so every rank
/// returns every result — those of one process bit for bit (a batch is the same whichever rank
/// computes it).
fn score_windows<B: Backend>(model: &Model<B>, enc: &[Encoded], batch_size: usize, comm: &dyn Collective, meter: &mut Meter) -> Result<Vec<LoglikResult>, ScoreError> {
    let mut order: Vec<usize> = (0..enc.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(enc[i].input.len()));
    let batch_size = batch_size.max(1);
    let cap_t = enc.iter().map(|e| e.input.len()).max().unwrap_or(1).max(1);
    let cap_b = batch_size.min(enc.len()).max(1);
    let mut acts = model.new_acts(cap_b, cap_t);
    let mut bufs = crate::lm_loss::LossBufs::new(&model.be, cap_b * cap_t);
    let mut results = vec![LoglikResult { loglik: 0.0, is_greedy: true }; enc.len()];
    let batches: Vec<&[usize]> = order.chunks(batch_size).collect();
    for unit in dealt_steps(batches.len(), comm.rank(), comm.world()) {
        let mine = match unit {
            Some(k) => score_batch(model, enc, batches[k], &mut acts, &mut bufs)?,
            None => Vec::new(),
        };
        // every rank's results of the step, on every rank: [index, loglik, greedy] each
        let lists = mine.iter().map(|(i, r)| vec![*i as f64, r.loglik, f64::from(u8::from(r.is_greedy))]).collect();
        let done: Vec<(usize, LoglikResult)> = all_gather_lists_f64(comm, lists)?.into_iter().map(|x| (x[0] as usize, LoglikResult { loglik: x[1], is_greedy: x[2] != 0.0 })).collect();
        meter.advance(done.len() as u64);
        for (i, r) in done {
            results[i] = r;
        }
    }
    meter.finish();
    Ok(results)
}

/// One batch of requests (indices into `enc`), right-padded to its longest: (index, result).
fn score_batch<B: Backend>(model: &Model<B>, enc: &[Encoded], chunk: &[usize], acts: &mut okapi_model::Acts<B>, bufs: &mut crate::lm_loss::LossBufs<B>) -> Result<Vec<(usize, LoglikResult)>, ScoreError> {
    let v = model.cfg.vocab_size;
    let t = chunk.iter().map(|&i| enc[i].input.len()).max().unwrap_or(1).max(1);
    let b = chunk.len();
    // right padding never reaches a result (positions see only their past)
    let pad = model.cfg.pad_token_id.or(model.cfg.eos_token_id).unwrap_or(0).min(v as u32 - 1);
    let mut tokens = vec![pad; b * t];
    let mut targets = vec![IGNORE_INDEX; b * t];
    for (row, &i) in chunk.iter().enumerate() {
        let e = &enc[i];
        let len = e.input.len();
        tokens[row * t..row * t + len].copy_from_slice(&e.input);
        for p in len - e.n_cont..len {
            targets[row * t + p] = e.targets[p];
        }
    }
    model.forward_hidden(acts, &tokens, b, t)?;
    let tl = crate::lm_loss::head_logprobs(model, acts, bufs, &targets, None)?;
    let (lp, gr) = (tl.logp, tl.greedy);
    Ok(chunk
        .iter()
        .enumerate()
        .map(|(row, &i)| {
            let e = &enc[i];
            let len = e.input.len();
            let span = row * t + len - e.n_cont..row * t + len;
            (i, LoglikResult { loglik: lp[span.clone()].iter().map(|&x| x as f64).sum(), is_greedy: gr[span].iter().all(|&g| g == 1.0) })
        })
        .collect())
}
