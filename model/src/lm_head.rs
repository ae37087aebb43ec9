//! The LM head over blocks of rows: with [`Model::head_chunk`] the (B·T, V) logits never exist
//! whole — each block of R rows gets its logits, its loss and gradient (the caller's kernel,
//! in place) and its head backward before the next block reuses the buffer. Without chunking
//! there is one block of all rows, computed exactly as [`Model::forward`] / [`Model::lm_head_bwd`]
//! do (the same bits).

use crate::acts::{Acts, Grads, Scratch};
use crate::error::Result;
use crate::model::Model;
use okapi_runtime::{Backend, Gemm};

impl<B: Backend> Model<B> {
    /// The row blocks `(r0, r1)` of the current batch that the head runs over, in order.
    pub fn head_blocks(&self, acts: &Acts<B>) -> Vec<(usize, usize)> {
        let n = acts.b * acts.t;
        let r = acts.head_rows.max(1);
        (0..n).step_by(r).map(|r0| (r0, (r0 + r).min(n))).collect()
    }

    /// Logits of rows `r0..r1` (after [`Model::forward_hidden`]) into `acts.logits[..(r1−r0)·V]`;
    /// nothing to do when they are there already (`acts.logits_valid`).
    pub fn head_rows_fwd(&self, acts: &mut Acts<B>, (r0, r1): (usize, usize)) -> Result<()> {
        let head = self.lm_head()?;
        if acts.logits_valid == Some((r0, r1)) {
            return Ok(());
        }
        let (c, v, rows) = (self.cfg.hidden_size, self.cfg.vocab_size, r1 - r0);
        let w = &self.values[head];
        if self.whole(acts, r0, r1) {
            self.be.matmul(&mut acts.logits, &acts.lnf, w, &Gemm::new(rows, v, c).trans_b());
        } else {
            self.be.copy_range(&mut acts.lnf_chunk, 0, &acts.lnf, r0 * c, rows * c);
            self.be.matmul(&mut acts.logits, &acts.lnf_chunk, w, &Gemm::new(rows, v, c).trans_b());
        }
        if self.softcap_fwd(&mut acts.logits, rows * v) {
            // the capped logits are what every consumer reads; a copy serves the cap's backward
            self.be.copy(&mut acts.logits_capped, &acts.logits, rows * v);
        }
        acts.logits_valid = Some((r0, r1));
        Ok(())
    }

    /// Gemma 2's final-logit soft cap on `len` logits in place (training head and decoding);
    /// whether the model has one.
    pub(crate) fn softcap_fwd(&self, logits: &mut B::Buf, len: usize) -> bool {
        let Some(cap) = self.cfg.features.final_softcap else { return false };
        self.be.softcap_fwd(logits, len, cap);
        true
    }

    /// Soft-capped logits: the gradient in `acts.logits` (rows of the last head forward) taken
    /// through the cap, ∂L/∂raw = ∂L/∂capped·(1 − (capped/c)²); nothing without a cap.
    pub(crate) fn softcap_bwd(&self, acts: &mut Acts<B>, rows: usize) {
        if let Some(cap) = self.cfg.features.final_softcap {
            self.be.softcap_bwd(&mut acts.logits, &acts.logits_capped, rows * self.cfg.vocab_size, cap);
        }
    }

    /// The head's backward for rows `r0..r1`, right after their [`Model::head_rows_fwd`] and the
    /// loss kernel that left ∂L/∂logits in `acts.logits`: `s.dln` rows r0..r1 (=) and the head
    /// weight's gradient (+=; the embedding's when tied).
    pub fn head_rows_bwd(&self, acts: &mut Acts<B>, s: &mut Scratch<B>, grads: &mut Grads<B>, (r0, r1): (usize, usize)) {
        if self.whole(acts, r0, r1) {
            return self.lm_head_bwd(acts, s, grads);
        }
        let head = self.lm_head.expect("head_rows_fwd checked the LM head");
        let (c, v, rows) = (self.cfg.hidden_size, self.cfg.vocab_size, r1 - r0);
        self.softcap_bwd(acts, rows);
        // dln[r0..r1] (R,C) = dlogits (R,V) · W (V,C)
        self.be.matmul(&mut acts.dln_chunk, &acts.logits, &self.values[head], &Gemm::new(rows, c, v));
        self.be.copy_range(&mut s.dln, r0 * c, &acts.dln_chunk, 0, rows * c);
        // dW (V,C) += dlogitsᵀ (V,R) · lnf[r0..r1] (R,C)
        if let Some(gw) = grads.get_mut(head) {
            self.be.matmul(gw, &acts.logits, &acts.lnf_chunk, &Gemm::new(v, c, rows).trans_a().accumulate());
        }
    }

    /// One block of every row, with the logits buffer holding them all: the unchunked head.
    fn whole(&self, acts: &Acts<B>, r0: usize, r1: usize) -> bool {
        r0 == 0 && r1 == acts.b * acts.t && acts.head_rows >= r1
    }
}
