//! Frozen weights kept in bf16 (`--frozen-bf16`): the linear weights of blocks that never train
//! — the frozen trunk under `--unfrozen-layers`, every block of a reference or reward model —
//! are stored as bf16, two per slot of an ordinary f32 buffer (`okapi_kernels::reduce::pack_bf16`,
//! any backend), and unpacked into a [`Stage`] (one block's f32 linears) right before that block
//! runs. Half the bytes of those weights, one block of f32 copies in exchange; the numbers are
//! those of the bf16-rounded weights. Saving writes the bf16 values back (exact when the
//! checkpoint was bf16, as the Okapi 7B ones are).

use crate::model::{Block, Model};
use okapi_kernels::reduce::pack_bf16;
use okapi_runtime::Backend;

/// f32 copies of one block's packed linear weights: a buffer per role (q, k, v, o, gate, up,
/// down), holding the weight of the block last staged.
pub struct Stage<B: Backend> {
    held: [Option<usize>; 7],
    bufs: Vec<B::Buf>,
}

impl<B: Backend> Model<B> {
    /// Packs the linear weights of every block below the lowest trainable one (per `trainable`,
    /// a [`Model::trainable_mask`]) into bf16; returns how many parameters were packed.
    /// Blocks above a trainable one are never packed (their backward reads the weights).
    pub fn freeze_in_bf16(&mut self, trainable: &[bool]) -> usize {
        let depth = self.frozen_trunk_depth(trainable);
        let mut n = 0;
        // blocks a hydra reference released hold nothing to pack
        for b in self.first_block.min(depth)..depth {
            for lin in self.blocks[b].linears().into_iter().flatten() {
                if !self.packed[lin.w] {
                    let host = self.host_value(lin.w);
                    self.values[lin.w] = self.be.upload(&pack_bf16(&host));
                    self.packed[lin.w] = true;
                    n += self.info[lin.w].numel();
                }
            }
        }
        n
    }

    /// Whether parameter `i` is stored packed in bf16.
    pub fn is_packed(&self, i: usize) -> bool {
        self.packed[i]
    }

    /// Replaces parameter `i` with `data` (f32), packing it when the parameter is packed.
    pub fn set_host_value(&mut self, i: usize, data: &[f32]) {
        self.values[i] = if self.packed[i] { self.be.upload(&pack_bf16(data)) } else { self.be.upload(data) };
    }

    /// A stage for this model's packed blocks (`None` when nothing is packed).
    pub fn new_stage(&self) -> Option<Stage<B>> {
        if !self.packed.iter().any(|&p| p) {
            return None;
        }
        let first = self.blocks.first()?;
        let bufs = first.linears().iter().map(|lin| self.be.zeros(lin.map_or(0, |l| l.d_in * l.d_out))).collect();
        Some(Stage { held: [None; 7], bufs })
    }

    /// Unpacks `blk`'s packed linear weights into `stage` (nothing for an unpacked block).
    pub(crate) fn stage_block(&self, blk: &Block, stage: &mut Option<Stage<B>>) {
        let Some(st) = stage.as_mut() else { return };
        for (r, lin) in blk.linears().into_iter().enumerate() {
            let Some(lin) = lin.filter(|l| self.packed[l.w]) else { continue };
            if st.held[r] != Some(lin.w) {
                self.be.unpack_bf16(&mut st.bufs[r], &self.values[lin.w], lin.d_in * lin.d_out);
                st.held[r] = Some(lin.w);
            }
        }
    }

    /// The f32 weight of parameter `i`: its value, or its staged copy when packed.
    pub(crate) fn weight<'a>(&'a self, i: usize, stage: Option<&'a Stage<B>>) -> &'a B::Buf {
        if !self.packed[i] {
            return &self.values[i];
        }
        let st = stage.expect("a packed weight is read through the stage its block was unpacked into");
        let r = st.held.iter().position(|&h| h == Some(i)).expect("the block of a packed weight is staged before it runs");
        &st.bufs[r]
    }
}
