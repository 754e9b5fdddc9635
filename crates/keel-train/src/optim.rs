//! Optimizers whose state can be saved and restored: AdamW and SGD with momentum, written as
//! PyTorch's `torch.optim.AdamW` / `torch.optim.SGD` compute them (candle-nn's AdamW keeps its
//! moments private). Both implement [`candle_nn::Optimizer`].

use std::collections::BTreeMap;
use std::ops::Range;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

/// An optimizer whose whole state can be read out and put back: for checkpoints.
pub trait OptimizerState {
    /// `adamw` or `sgd`.
    fn kind(&self) -> &'static str;
    /// Steps taken (AdamW's bias correction depends on it).
    fn steps(&self) -> u64;
    /// The current learning rate.
    fn lr(&self) -> f64;
    /// Sets the learning rate (the schedule does, before each step).
    fn set_lr(&mut self, lr: f64);
    /// One update from `grads`.
    fn update(&mut self, grads: &GradStore) -> candle_core::Result<()>;
    /// The state tensors by name (`exp_avg.<param>`, `exp_avg_sq.<param>`,
    /// `momentum_buffer.<param>`), on the CPU.
    fn state_tensors(&self) -> candle_core::Result<BTreeMap<String, Tensor>>;
    /// Restores what [`OptimizerState::state_tensors`] and [`OptimizerState::steps`] gave.
    fn load_state(&mut self, steps: u64, tensors: &BTreeMap<String, Tensor>) -> Result<(), String>;

    /// Optimizer-state sharding (ZeRO-1): from now on hold the state of the elements `owned`
    /// of the flattened parameter vector only (the parameters in order, each row-major; see
    /// [`shard_range`](crate::shard_range)), cut from the state held now. The state tensors
    /// then are each parameter's 1-D piece of `owned` (none for a parameter it does not
    /// reach), and updates go through [`OptimizerState::shard_update`]. Every parameter must
    /// be `f32` (the trainer all-gathers them as such). The default refuses.
    fn shard(&mut self, owned: Range<usize>) -> Result<(), String> {
        let _ = owned;
        Err(format!(
            "the {} optimizer cannot shard its state",
            self.kind()
        ))
    }

    /// The elements owned once [`OptimizerState::shard`]ed; `None` while replicated.
    fn owned(&self) -> Option<Range<usize>> {
        None
    }

    /// Sharded: computes the update of the owned elements from `grads` (the whole, reduced
    /// gradients) and returns their new values in element order, assigning nothing (neither
    /// parameters nor state): [`OptimizerState::finish_shard_update`] assigns the state or
    /// drops it, the trainer assigns the parameters once every rank's share is gathered.
    fn shard_update(&mut self, grads: &GradStore) -> candle_core::Result<Vec<f32>> {
        let _ = grads;
        candle_core::bail!("the {} optimizer is not sharded", self.kind())
    }

    /// Assigns (`apply`, and counts the step) or drops the state the last
    /// [`OptimizerState::shard_update`] computed: every rank applies only when every rank's
    /// update succeeded.
    fn finish_shard_update(&mut self, apply: bool) {
        let _ = apply;
    }
}

/// The parameters' element counts, after checking that each is `f32` and that `owned` lies
/// within them: what [`OptimizerState::shard`] needs.
fn shard_sizes<'a>(
    vars: impl Iterator<Item = (&'a str, &'a Var)>,
    owned: &Range<usize>,
    already: bool,
) -> Result<Vec<usize>, String> {
    if already {
        return Err("the optimizer state is sharded already".into());
    }
    let mut sizes = Vec::new();
    for (name, var) in vars {
        if var.dtype() != DType::F32 {
            return Err(format!(
                "parameter `{name}` is {:?}: a sharded optimizer needs f32 parameters",
                var.dtype()
            ));
        }
        sizes.push(var.elem_count());
    }
    let total: usize = sizes.iter().sum();
    if owned.start > owned.end || owned.end > total {
        return Err(format!(
            "elements {}..{} are not within the {total} parameter elements",
            owned.start, owned.end
        ));
    }
    Ok(sizes)
}

/// Elements `piece` of `t` flattened (all of `t` when `None`).
fn cut(t: &Tensor, piece: &Option<Range<usize>>) -> candle_core::Result<Tensor> {
    match piece {
        None => Ok(t.clone()),
        Some(r) => t.flatten_all()?.narrow(0, r.start, r.len()),
    }
}

/// The dims a state tensor of a parameter of `dims` has for `piece`.
fn state_dims(dims: &[usize], piece: &Option<Range<usize>>) -> Vec<usize> {
    match piece {
        None => dims.to_vec(),
        Some(r) => vec![r.len()],
    }
}

/// Whether a parameter has no state here (its piece is empty).
fn outside(piece: &Option<Range<usize>>) -> bool {
    piece.as_ref().is_some_and(|r| r.is_empty())
}

/// A state tensor loaded for a parameter `var` and its `piece`, checked.
fn load_one(
    tensors: &BTreeMap<String, Tensor>,
    key: String,
    var: &Var,
    piece: &Option<Range<usize>>,
) -> Result<Option<Tensor>, String> {
    let Some(t) = tensors.get(&key) else {
        return Ok(None);
    };
    let dims = state_dims(var.dims(), piece);
    if t.dims() != dims || t.dtype() != var.dtype() {
        let what = if piece.is_some() {
            "its shard of the parameter"
        } else {
            "the parameter"
        };
        return Err(format!(
            "optimizer state `{key}` is {:?} {:?}, {what} {:?} {:?}",
            t.dtype(),
            t.dims(),
            var.dtype(),
            dims
        ));
    }
    Ok(Some(t.to_device(var.device()).map_err(|e| e.to_string())?))
}

/// The new values of the owned elements in order: for each parameter its `piece`, from
/// `updated` where the update computed it, else the parameter's current values.
fn owned_values<'a>(
    parts: impl Iterator<Item = (&'a Var, &'a Option<Range<usize>>, Option<&'a Tensor>)>,
) -> candle_core::Result<Vec<f32>> {
    let mut values = Vec::new();
    for (var, piece, updated) in parts {
        if outside(piece) {
            continue;
        }
        let piece_values = match updated {
            Some(t) => t.flatten_all()?.to_vec1::<f32>()?,
            None => cut(var.as_tensor(), piece)?.to_vec1::<f32>()?,
        };
        values.extend(piece_values);
    }
    Ok(values)
}

/// AdamW's hyper-parameters (PyTorch's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// A hyper-parameter that is out of range: the field's name and why.
pub(crate) type BadSetting = (&'static str, String);

fn finite_at_least_zero(field: &'static str, v: f64) -> Result<(), BadSetting> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err((
            field,
            format!("{field} must be a finite number >= 0, got {v}"),
        ))
    }
}

impl AdamWConfig {
    /// Checks that every update is finite: `lr` and `weight_decay` finite and >= 0, `beta1`
    /// and `beta2` in `[0, 1)`, `eps` finite and > 0. Returns the field at fault and why.
    pub(crate) fn check(&self) -> Result<(), BadSetting> {
        finite_at_least_zero("lr", self.lr)?;
        for (field, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err((field, format!("{field} must be in [0, 1), got {beta}")));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err((
                "eps",
                format!("eps must be a finite number > 0, got {}", self.eps),
            ));
        }
        finite_at_least_zero("weight_decay", self.weight_decay)
    }
}

/// Whether every value of every tensor is finite, in one read back from the device:
/// `t - t` is 0 for a finite value and NaN for an infinite or NaN one.
fn all_finite(tensors: &[&Tensor]) -> candle_core::Result<bool> {
    let mut total: Option<Tensor> = None;
    for t in tensors {
        let zero = t.sub(t)?.sum_all()?.to_dtype(candle_core::DType::F32)?;
        total = Some(match total {
            None => zero,
            Some(sum) => (sum + zero)?,
        });
    }
    Ok(total.map_or(Ok(0.0), |t| t.to_scalar::<f32>())?.is_finite())
}

/// The error of an update that would leave a non-finite value: nothing is assigned.
fn non_finite_update(kind: &str, step: u64, lr: f64) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "the {kind} update of step {step} (learning rate {lr}) gives non-finite parameters or \
         state; nothing was changed"
    ))
}

/// `beta^step` for any step count (`powi` takes an `i32`).
fn power(beta: f64, step: u64) -> f64 {
    beta.powi(step.min(i32::MAX as u64) as i32)
}

/// The per-step constants of an AdamW update, as [`AdamW::compute`] derives them.
struct AdamConstants {
    /// `1 - lr * weight_decay`.
    decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    bias_correction2_sqrt: f64,
    /// `lr / bias_correction1`.
    step_size: f64,
}

/// One parameter's AdamW update in candle ops (any device and dtype): the new value and
/// moments.
fn adamw_ops(
    value: &Tensor,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    k: &AdamConstants,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let param = value.affine(k.decay, 0.0)?;
    let exp_avg = (exp_avg + ((grad - exp_avg)? * (1.0 - k.beta1))?)?;
    let exp_avg_sq = ((exp_avg_sq * k.beta2)? + (grad.sqr()? * (1.0 - k.beta2))?)?;
    let denom = (exp_avg_sq.sqrt()? / k.bias_correction2_sqrt)?.affine(1.0, k.eps)?;
    let param = (param - ((&exp_avg / denom)? * k.step_size)?)?;
    Ok((param, exp_avg, exp_avg_sq))
}

/// A tensor's storage (read-locked) and the range of its values there, when they are
/// contiguous `f32` in CPU memory; `None` otherwise.
fn cpu_f32(
    t: &Tensor,
) -> Option<(
    impl std::ops::Deref<Target = candle_core::Storage> + '_,
    Range<usize>,
)> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    if end - start != t.elem_count() || !matches!(&*storage, candle_core::Storage::Cpu(_)) {
        return None;
    }
    Some((storage, start..end))
}

/// The values [`cpu_f32`] found.
fn as_f32<'a>(storage: &'a candle_core::Storage, range: &Range<usize>) -> Option<&'a [f32]> {
    match storage {
        candle_core::Storage::Cpu(cpu) => cpu.as_slice::<f32>().ok()?.get(range.clone()),
        _ => None,
    }
}

/// One parameter's new value and moments, and whether all three are finite.
type FusedAdam = (Tensor, Tensor, Tensor, bool);

/// One parameter's AdamW update in a single pass over CPU `f32` memory instead of the candle
/// ops of [`AdamW::compute`]'s general path (nine passes, each a new tensor, and three more
/// for the finiteness check; [`adamw_ops`]): the same `f32` operations in the same order, each constant
/// rounded to `f32` as candle's `affine` rounds it, so the values are bit for bit the same.
/// `None` (the caller takes the general path) unless all four tensors are contiguous `f32`
/// on the CPU with one shape.
fn adamw_fused(
    value: &Tensor,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    k: &AdamConstants,
) -> candle_core::Result<Option<FusedAdam>> {
    let shape = value.shape();
    if [grad, exp_avg, exp_avg_sq]
        .iter()
        .any(|t| t.shape() != shape)
    {
        return Ok(None);
    }
    let (Some(v0), Some(g0), Some(m0), Some(s0)) = (
        cpu_f32(value),
        cpu_f32(grad),
        cpu_f32(exp_avg),
        cpu_f32(exp_avg_sq),
    ) else {
        return Ok(None);
    };
    let (Some(value_s), Some(grad_s), Some(m_s), Some(sq_s)) = (
        as_f32(&v0.0, &v0.1),
        as_f32(&g0.0, &g0.1),
        as_f32(&m0.0, &m0.1),
        as_f32(&s0.0, &s0.1),
    ) else {
        return Ok(None);
    };
    // candle's affine(mul, add) computes `v * mul as f32 + add as f32`; `t * x` is
    // affine(x, 0) and `t / x` affine(1 / x, 0).
    let decay = k.decay as f32;
    let one_minus_beta1 = (1.0 - k.beta1) as f32;
    let beta2 = k.beta2 as f32;
    let one_minus_beta2 = (1.0 - k.beta2) as f32;
    let inv_bias_correction2_sqrt = (1.0 / k.bias_correction2_sqrt) as f32;
    let eps = k.eps as f32;
    let step_size = k.step_size as f32;
    let n = value_s.len();
    let (mut param, mut m_new, mut sq_new) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    let finite = adamw_elements(
        [value_s, grad_s, m_s, sq_s],
        [&mut param, &mut m_new, &mut sq_new],
        [
            decay,
            one_minus_beta1,
            beta2,
            one_minus_beta2,
            inv_bias_correction2_sqrt,
            eps,
            step_size,
        ],
    );
    drop((v0, g0, m0, s0));
    let device = value.device();
    Ok(Some((
        Tensor::from_vec(param, shape, device)?,
        Tensor::from_vec(m_new, shape, device)?,
        Tensor::from_vec(sq_new, shape, device)?,
        finite,
    )))
}

/// [`adamw_fused`]'s loop: the value, gradient and moments in, the new value and moments
/// out (slices of one length, as arguments so the compiler knows they do not overlap and
/// vectorises the loop), and whether every result is finite.
fn adamw_elements(
    [value, grad, m, sq]: [&[f32]; 4],
    [param, m_new, sq_new]: [&mut [f32]; 3],
    [
        decay,
        one_minus_beta1,
        beta2,
        one_minus_beta2,
        inv_bias_correction2_sqrt,
        eps,
        step_size,
    ]: [f32; 7],
) -> bool {
    // An exponent of all ones is an infinity or a NaN.
    const EXPONENT: u32 = 0x7f80_0000;
    let mut non_finite = 0u32;
    let inputs = value.iter().zip(grad).zip(m).zip(sq);
    let outputs = param
        .iter_mut()
        .zip(m_new.iter_mut())
        .zip(sq_new.iter_mut());
    for ((((&v, &g), &m), &sq), ((p_out, m_out), sq_out)) in inputs.zip(outputs) {
        let decayed = v * decay + 0.0;
        let m1 = m + ((g - m) * one_minus_beta1 + 0.0);
        let sq1 = (sq * beta2 + 0.0) + ((g * g) * one_minus_beta2 + 0.0);
        let denom = (sq1.sqrt() * inv_bias_correction2_sqrt + 0.0) * 1.0 + eps;
        let p1 = decayed - ((m1 / denom) * step_size + 0.0);
        for x in [p1, m1, sq1] {
            non_finite |= u32::from(x.to_bits() & EXPONENT == EXPONENT);
        }
        *p_out = p1;
        *m_out = m1;
        *sq_out = sq1;
    }
    non_finite == 0
}

#[derive(Debug)]
struct AdamParam {
    name: String,
    var: Var,
    /// Sharded: the elements of the flattened parameter whose moments are held here (the
    /// moments then 1-D); `None` while replicated (the moments shaped as the parameter).
    piece: Option<Range<usize>>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// One computed AdamW update: the step it makes and, per parameter updated, its index, new
/// value (of its piece, when sharded) and new moments.
type AdamUpdate = (u64, Vec<(usize, Tensor, Tensor, Tensor)>);

/// AdamW (Loshchilov & Hutter) exactly as `torch.optim.AdamW` (no amsgrad) computes it.
#[derive(Debug)]
pub struct AdamW {
    params: Vec<AdamParam>,
    config: AdamWConfig,
    steps: u64,
    /// The elements owned when sharded.
    owned: Option<Range<usize>>,
    /// A sharded update computed and not yet applied.
    pending: Option<AdamUpdate>,
}

/// `candle_nn::Optimizer` for one of keel's optimizers (named `param0`, `param1`, ...).
macro_rules! candle_optimizer {
    ($optimizer:ident, $config:ty) => {
        impl candle_nn::Optimizer for $optimizer {
            type Config = $config;

            fn new(vars: Vec<Var>, config: $config) -> candle_core::Result<Self> {
                $optimizer::named(unnamed(vars), config)
            }
            fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
                self.update(grads)
            }
            fn learning_rate(&self) -> f64 {
                self.lr()
            }
            fn set_learning_rate(&mut self, lr: f64) {
                self.set_lr(lr);
            }
        }
    };
}

fn unnamed(vars: Vec<Var>) -> Vec<(String, Var)> {
    vars.into_iter()
        .enumerate()
        .map(|(i, v)| (format!("param{i}"), v))
        .collect()
}

impl AdamW {
    /// AdamW over named parameters (the names key the saved state).
    pub fn named(vars: Vec<(String, Var)>, config: AdamWConfig) -> candle_core::Result<Self> {
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                Ok(AdamParam {
                    exp_avg: var.zeros_like()?,
                    exp_avg_sq: var.zeros_like()?,
                    piece: None,
                    name,
                    var,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(AdamW {
            params,
            config,
            steps: 0,
            owned: None,
            pending: None,
        })
    }

    /// Computes the update of every parameter (its piece, when sharded) that has a
    /// gradient, and checks that every result is finite; assigns nothing.
    fn compute(&self, grads: &GradStore) -> candle_core::Result<AdamUpdate> {
        let AdamWConfig {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let step = self.steps + 1;
        let bias_correction1 = 1.0 - power(beta1, step);
        let bias_correction2_sqrt = (1.0 - power(beta2, step)).sqrt();
        let step_size = lr / bias_correction1;
        let mut updates = Vec::with_capacity(self.params.len());
        let mut fused_updates = Vec::with_capacity(self.params.len());
        for (i, p) in self.params.iter().enumerate() {
            let Some(grad) = grads.get(&p.var) else {
                continue;
            };
            if outside(&p.piece) {
                continue;
            }
            // Elementwise: a piece's result is, bit for bit, that piece of the whole's.
            let value = cut(p.var.as_tensor(), &p.piece)?;
            let grad = cut(grad, &p.piece)?;
            let constants = AdamConstants {
                decay: 1.0 - lr * weight_decay,
                beta1,
                beta2,
                eps,
                bias_correction2_sqrt,
                step_size,
            };
            if let Some(fused) = adamw_fused(&value, &grad, &p.exp_avg, &p.exp_avg_sq, &constants)?
            {
                let (param, exp_avg, exp_avg_sq, finite) = fused;
                if !finite {
                    return Err(non_finite_update("AdamW", step, lr));
                }
                fused_updates.push((i, param, exp_avg, exp_avg_sq));
                continue;
            }
            let (param, exp_avg, exp_avg_sq) =
                adamw_ops(&value, &grad, &p.exp_avg, &p.exp_avg_sq, &constants)?;
            updates.push((i, param, exp_avg, exp_avg_sq));
        }
        // A non-finite result is refused before anything is assigned, so the state stays the
        // last good one.
        let computed: Vec<&Tensor> = updates.iter().flat_map(|(_, p, m, v)| [p, m, v]).collect();
        if !all_finite(&computed)? {
            return Err(non_finite_update("AdamW", step, lr));
        }
        updates.extend(fused_updates);
        updates.sort_by_key(|(i, ..)| *i);
        Ok((step, updates))
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }
}

candle_optimizer!(AdamW, AdamWConfig);

impl OptimizerState for AdamW {
    fn kind(&self) -> &'static str {
        "adamw"
    }
    fn steps(&self) -> u64 {
        self.steps
    }
    fn lr(&self) -> f64 {
        self.config.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn update(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        if self.owned.is_some() {
            candle_core::bail!(
                "a sharded AdamW updates through shard_update (the trainer gathers the parameters)"
            );
        }
        // Everything is computed before anything is assigned: an error leaves the parameters
        // and moments as they were (the last good state the emergency checkpoint saves).
        let (step, updates) = self.compute(grads)?;
        for (i, param, exp_avg, exp_avg_sq) in updates {
            let p = &mut self.params[i];
            p.var.set(&param)?;
            p.exp_avg = exp_avg;
            p.exp_avg_sq = exp_avg_sq;
        }
        self.steps = step;
        Ok(())
    }

    fn state_tensors(&self) -> candle_core::Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for p in self.params.iter().filter(|p| !outside(&p.piece)) {
            out.insert(format!("exp_avg.{}", p.name), p.exp_avg.clone());
            out.insert(format!("exp_avg_sq.{}", p.name), p.exp_avg_sq.clone());
        }
        Ok(out)
    }

    fn load_state(&mut self, steps: u64, tensors: &BTreeMap<String, Tensor>) -> Result<(), String> {
        let mut loaded = Vec::new();
        for p in &self.params {
            if outside(&p.piece) {
                loaded.push(None);
                continue;
            }
            let get = |key: String| {
                load_one(tensors, key.clone(), &p.var, &p.piece)?
                    .ok_or_else(|| format!("optimizer state `{key}` is missing"))
            };
            loaded.push(Some((
                get(format!("exp_avg.{}", p.name))?,
                get(format!("exp_avg_sq.{}", p.name))?,
            )));
        }
        for (p, moments) in self.params.iter_mut().zip(loaded) {
            if let Some((m, v)) = moments {
                p.exp_avg = m;
                p.exp_avg_sq = v;
            }
        }
        self.steps = steps;
        self.pending = None;
        Ok(())
    }

    fn shard(&mut self, owned: Range<usize>) -> Result<(), String> {
        let vars = self.params.iter().map(|p| (p.name.as_str(), &p.var));
        let sizes = shard_sizes(vars, &owned, self.owned.is_some())?;
        let pieces = crate::shard::pieces(&sizes, &owned);
        let mut cut_moments = Vec::with_capacity(pieces.len());
        for (p, piece) in self.params.iter().zip(&pieces) {
            let piece = Some(piece.clone());
            cut_moments.push(if outside(&piece) {
                (p.exp_avg.clone(), p.exp_avg_sq.clone())
            } else {
                let cut = |t: &Tensor| cut(t, &piece).map_err(|e| e.to_string());
                (cut(&p.exp_avg)?, cut(&p.exp_avg_sq)?)
            });
        }
        for ((p, piece), (m, v)) in self.params.iter_mut().zip(pieces).zip(cut_moments) {
            p.piece = Some(piece);
            p.exp_avg = m;
            p.exp_avg_sq = v;
        }
        self.owned = Some(owned);
        Ok(())
    }

    fn owned(&self) -> Option<Range<usize>> {
        self.owned.clone()
    }

    fn shard_update(&mut self, grads: &GradStore) -> candle_core::Result<Vec<f32>> {
        if self.owned.is_none() {
            candle_core::bail!("the adamw optimizer is not sharded");
        }
        self.pending = None;
        let (step, updates) = self.compute(grads)?;
        let values = owned_values(self.params.iter().enumerate().map(|(i, p)| {
            let updated = updates.iter().find(|u| u.0 == i).map(|u| &u.1);
            (&p.var, &p.piece, updated)
        }))?;
        self.pending = Some((step, updates));
        Ok(values)
    }

    fn finish_shard_update(&mut self, apply: bool) {
        let Some((step, updates)) = self.pending.take() else {
            return;
        };
        if apply {
            for (i, _, exp_avg, exp_avg_sq) in updates {
                let p = &mut self.params[i];
                p.exp_avg = exp_avg;
                p.exp_avg_sq = exp_avg_sq;
            }
            self.steps = step;
        }
    }
}

/// SGD's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0 for plain SGD).
    pub momentum: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

impl SgdConfig {
    /// Checks that every update is finite: `lr` and `weight_decay` finite and >= 0,
    /// `momentum` in `[0, 1]`, and Nesterov only with momentum. Returns the field at fault.
    pub(crate) fn check(&self) -> Result<(), BadSetting> {
        finite_at_least_zero("lr", self.lr)?;
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err((
                "momentum",
                format!("momentum must be in [0, 1], got {}", self.momentum),
            ));
        }
        if self.nesterov && self.momentum == 0.0 {
            return Err(("nesterov", "nesterov needs a momentum above 0".to_string()));
        }
        finite_at_least_zero("weight_decay", self.weight_decay)
    }
}

#[derive(Debug)]
struct SgdParam {
    name: String,
    var: Var,
    /// Sharded: the elements of the flattened parameter whose buffer is held here.
    piece: Option<Range<usize>>,
    buffer: Option<Tensor>,
}

/// One computed SGD update: per parameter updated, its index, new value (of its piece,
/// when sharded) and new momentum buffer.
type SgdUpdate = Vec<(usize, Tensor, Option<Tensor>)>;

/// SGD with momentum as `torch.optim.SGD` computes it (dampening 0): the first step's buffer
/// is the gradient itself.
#[derive(Debug)]
pub struct SgdMomentum {
    params: Vec<SgdParam>,
    config: SgdConfig,
    steps: u64,
    /// The elements owned when sharded.
    owned: Option<Range<usize>>,
    /// A sharded update computed and not yet applied.
    pending: Option<SgdUpdate>,
}

impl SgdMomentum {
    /// SGD over named parameters.
    pub fn named(vars: Vec<(String, Var)>, config: SgdConfig) -> candle_core::Result<Self> {
        Ok(SgdMomentum {
            params: vars
                .into_iter()
                .map(|(name, var)| SgdParam {
                    name,
                    var,
                    piece: None,
                    buffer: None,
                })
                .collect(),
            config,
            steps: 0,
            owned: None,
            pending: None,
        })
    }

    /// Computes the update of every parameter (its piece, when sharded) that has a
    /// gradient, and checks that every result is finite; assigns nothing.
    fn compute(&self, grads: &GradStore) -> candle_core::Result<SgdUpdate> {
        let SgdConfig {
            lr,
            momentum,
            weight_decay,
            nesterov,
        } = self.config;
        let mut updates = Vec::with_capacity(self.params.len());
        for (i, p) in self.params.iter().enumerate() {
            let Some(grad) = grads.get(&p.var) else {
                continue;
            };
            if outside(&p.piece) {
                continue;
            }
            // Elementwise: a piece's result is, bit for bit, that piece of the whole's.
            let value = cut(p.var.as_tensor(), &p.piece)?;
            let grad = cut(grad, &p.piece)?;
            let mut d_p = if weight_decay != 0.0 {
                (&grad + (&value * weight_decay)?)?
            } else {
                grad
            };
            let mut buffer = None;
            if momentum != 0.0 {
                let buf = match &p.buffer {
                    None => d_p.clone(),
                    Some(b) => ((b * momentum)? + &d_p)?,
                };
                d_p = if nesterov {
                    (d_p + (&buf * momentum)?)?
                } else {
                    buf.clone()
                };
                buffer = Some(buf);
            }
            let param = (value - (d_p * lr)?)?;
            updates.push((i, param, buffer));
        }
        let computed: Vec<&Tensor> = updates
            .iter()
            .flat_map(|(_, p, b)| std::iter::once(p).chain(b.as_ref()))
            .collect();
        if !all_finite(&computed)? {
            return Err(non_finite_update("SGD", self.steps + 1, lr));
        }
        Ok(updates)
    }
}

candle_optimizer!(SgdMomentum, SgdConfig);

impl OptimizerState for SgdMomentum {
    fn kind(&self) -> &'static str {
        "sgd"
    }
    fn steps(&self) -> u64 {
        self.steps
    }
    fn lr(&self) -> f64 {
        self.config.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn update(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        if self.owned.is_some() {
            candle_core::bail!(
                "a sharded SGD updates through shard_update (the trainer gathers the parameters)"
            );
        }
        for (i, param, buffer) in self.compute(grads)? {
            let p = &mut self.params[i];
            p.var.set(&param)?;
            if buffer.is_some() {
                p.buffer = buffer;
            }
        }
        self.steps += 1;
        Ok(())
    }

    fn state_tensors(&self) -> candle_core::Result<BTreeMap<String, Tensor>> {
        Ok(self
            .params
            .iter()
            .filter_map(|p| {
                p.buffer
                    .as_ref()
                    .map(|b| (format!("momentum_buffer.{}", p.name), b.clone()))
            })
            .collect())
    }

    fn load_state(&mut self, steps: u64, tensors: &BTreeMap<String, Tensor>) -> Result<(), String> {
        let mut loaded = Vec::new();
        for p in &self.params {
            // No buffer yet (saved before the first step, or momentum 0): none.
            loaded.push(if outside(&p.piece) {
                None
            } else {
                let key = format!("momentum_buffer.{}", p.name);
                load_one(tensors, key, &p.var, &p.piece)?
            });
        }
        for (p, buffer) in self.params.iter_mut().zip(loaded) {
            p.buffer = buffer;
        }
        self.steps = steps;
        self.pending = None;
        Ok(())
    }

    fn shard(&mut self, owned: Range<usize>) -> Result<(), String> {
        let vars = self.params.iter().map(|p| (p.name.as_str(), &p.var));
        let sizes = shard_sizes(vars, &owned, self.owned.is_some())?;
        let pieces = crate::shard::pieces(&sizes, &owned);
        let mut buffers = Vec::with_capacity(pieces.len());
        for (p, piece) in self.params.iter().zip(&pieces) {
            let piece = Some(piece.clone());
            buffers.push(match &p.buffer {
                Some(b) if !outside(&piece) => Some(cut(b, &piece).map_err(|e| e.to_string())?),
                _ => None,
            });
        }
        for ((p, piece), buffer) in self.params.iter_mut().zip(pieces).zip(buffers) {
            p.piece = Some(piece);
            p.buffer = buffer;
        }
        self.owned = Some(owned);
        Ok(())
    }

    fn owned(&self) -> Option<Range<usize>> {
        self.owned.clone()
    }

    fn shard_update(&mut self, grads: &GradStore) -> candle_core::Result<Vec<f32>> {
        if self.owned.is_none() {
            candle_core::bail!("the sgd optimizer is not sharded");
        }
        self.pending = None;
        let updates = self.compute(grads)?;
        let values = owned_values(self.params.iter().enumerate().map(|(i, p)| {
            let updated = updates.iter().find(|u| u.0 == i).map(|u| &u.1);
            (&p.var, &p.piece, updated)
        }))?;
        self.pending = Some(updates);
        Ok(values)
    }

    fn finish_shard_update(&mut self, apply: bool) {
        let Some(updates) = self.pending.take() else {
            return;
        };
        if apply {
            for (i, _, buffer) in updates {
                if buffer.is_some() {
                    self.params[i].buffer = buffer;
                }
            }
            self.steps += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;

    /// Reference: the algorithm box of `torch.optim.AdamW`'s documentation evaluated in numpy
    /// float64 for `p = [1, -2, 3]`, `lr=0.1`, the other defaults, loss `(p**2).sum()`, three
    /// steps: `[0.69891118, -1.69494451, 2.69170365]`.
    #[test]
    fn adamw_matches_torch() {
        let var = Var::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::named(
            vec![("p".into(), var.clone())],
            AdamWConfig {
                lr: 0.1,
                ..AdamWConfig::default()
            },
        )
        .unwrap();
        for _ in 0..3 {
            let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.update(&loss.backward().unwrap()).unwrap();
        }
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        let want = [0.698_911_2f32, -1.694_944_5, 2.691_703_6];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }

    /// The fused AdamW update is bit for bit the candle ops' (which training had before it,
    /// and which other devices and dtypes still take), on values that exercise rounding,
    /// zeros of both signs, huge and tiny magnitudes, over several steps; a transposed
    /// (non-contiguous) gradient takes the candle ops, and a non-finite result is reported.
    #[test]
    fn fused_adamw_is_bit_for_bit_the_candle_ops() {
        let mut rng = crate::TrainRng::new(5);
        let n = 3 * 70_001; // above candle's threshold for its parallel elementwise ops
        let mut values = rng.uniform(n, -3.0, 3.0);
        values[..6].copy_from_slice(&[0.0, -0.0, 1e-38, -1e30, 7.0e-6, 1.0]);
        let shape = (3, n / 3);
        let value = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
        let mut m = value.zeros_like().unwrap();
        let mut v = value.zeros_like().unwrap();
        let mut p = value.clone();
        for step in 1..=4u64 {
            let mut grads = rng.uniform(n, -1.0, 1.0);
            grads[..3].copy_from_slice(&[0.0, -0.0, 1e15]);
            let grad = Tensor::from_vec(grads, shape, &Device::Cpu).unwrap();
            let (beta1, beta2, lr) = (0.9, 0.999, 1e-3 * step as f64);
            let k = AdamConstants {
                decay: 1.0 - lr * 0.01,
                beta1,
                beta2,
                eps: 1e-8,
                bias_correction2_sqrt: (1.0 - power(beta2, step)).sqrt(),
                step_size: lr / (1.0 - power(beta1, step)),
            };
            let (fp, fm, fv, finite) = adamw_fused(&p, &grad, &m, &v, &k).unwrap().unwrap();
            assert!(finite);
            let (op, om, ov) = adamw_ops(&p, &grad, &m, &v, &k).unwrap();
            for (fused, ops) in [(&fp, &op), (&fm, &om), (&fv, &ov)] {
                let bits = |t: &Tensor| -> Vec<u32> {
                    let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    values.iter().map(|x| x.to_bits()).collect()
                };
                assert!(
                    bits(fused) == bits(ops),
                    "step {step}: fused and candle ops differ"
                );
            }
            (p, m, v) = (fp, fm, fv);
        }
        let k = AdamConstants {
            decay: 1.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            bias_correction2_sqrt: 1.0,
            step_size: f64::INFINITY,
        };
        let (.., finite) = adamw_fused(&p, &p, &m, &v, &k).unwrap().unwrap();
        assert!(!finite, "an infinite step size gives non-finite parameters");
        let square = Tensor::from_vec(vec![1f32, 2.0, 3.0, 4.0], (2, 2), &Device::Cpu).unwrap();
        let transposed = square.t().unwrap();
        assert!(
            adamw_fused(&square, &transposed, &square, &square, &k)
                .unwrap()
                .is_none(),
            "a non-contiguous gradient takes the candle ops"
        );
    }

    /// `torch.optim.SGD([p], lr=0.1, momentum=0.9)`, loss `(p**2).sum()`, three steps.
    #[test]
    fn sgd_momentum_matches_torch() {
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = SgdMomentum::named(
            vec![("p".into(), var.clone())],
            SgdConfig {
                lr: 0.1,
                ..SgdConfig::default()
            },
        )
        .unwrap();
        for _ in 0..3 {
            let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.update(&loss.backward().unwrap()).unwrap();
        }
        // p1 = 0.8 p0; buf1 = 2 p0. p2 = p1 - 0.1 (0.9 buf1 + 2 p1) ...
        let p0 = [1.0f32, -2.0];
        let mut p = p0;
        let mut buf = [0.0f32; 2];
        for step in 0..3 {
            for i in 0..2 {
                let g = 2.0 * p[i];
                buf[i] = if step == 0 { g } else { 0.9 * buf[i] + g };
                p[i] -= 0.1 * buf[i];
            }
        }
        assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), p);
    }

    /// Hardening issue #13: `lr = inf` (or NaN, or `eps = 0` with `beta2 = 1`) made every
    /// weight NaN; the update is refused before anything is assigned, and the settings are
    /// refused by `check`.
    #[test]
    fn non_finite_update_leaves_the_parameters_as_they_were() {
        let var = Var::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let loss = |v: &Var| v.as_tensor().sqr().unwrap().sum_all().unwrap();
        let mut adam = AdamW::named(
            vec![("p".into(), var.clone())],
            AdamWConfig {
                lr: f64::INFINITY,
                ..AdamWConfig::default()
            },
        )
        .unwrap();
        let err = adam.update(&loss(&var).backward().unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .contains("the AdamW update of step 1 (learning rate inf) gives non-finite"),
            "{err}"
        );
        assert_eq!(adam.steps(), 0);
        assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), [1.0, -2.0, 3.0]);
        let moments = adam.state_tensors().unwrap();
        assert_eq!(
            moments["exp_avg.p"].to_vec1::<f32>().unwrap(),
            [0.0, 0.0, 0.0]
        );
        let mut sgd = SgdMomentum::named(
            vec![("p".into(), var.clone())],
            SgdConfig {
                lr: f64::NAN,
                ..SgdConfig::default()
            },
        )
        .unwrap();
        assert!(sgd.update(&loss(&var).backward().unwrap()).is_err());
        assert_eq!(sgd.steps(), 0);
        assert!(sgd.state_tensors().unwrap().is_empty());
        assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), [1.0, -2.0, 3.0]);

        let adamw = |f: fn(&mut AdamWConfig)| {
            let mut c = AdamWConfig::default();
            f(&mut c);
            c.check().map_err(|e| e.0)
        };
        assert_eq!(adamw(|c| c.lr = f64::NAN), Err("lr"));
        assert_eq!(adamw(|c| c.lr = -1e-3), Err("lr"));
        assert_eq!(adamw(|c| c.beta2 = 1.0), Err("beta2"));
        assert_eq!(adamw(|c| c.beta1 = -0.1), Err("beta1"));
        assert_eq!(adamw(|c| c.eps = 0.0), Err("eps"));
        assert_eq!(adamw(|c| c.weight_decay = f64::NAN), Err("weight_decay"));
        assert_eq!(adamw(|_| {}), Ok(()));
        let sgd = |f: fn(&mut SgdConfig)| {
            let mut c = SgdConfig::default();
            f(&mut c);
            c.check().map_err(|e| e.0)
        };
        assert_eq!(sgd(|c| c.momentum = 1.5), Err("momentum"));
        assert_eq!(sgd(|c| c.momentum = f64::NAN), Err("momentum"));
        assert_eq!(sgd(|c| c.lr = f64::INFINITY), Err("lr"));
        assert_eq!(
            sgd(|c| {
                c.momentum = 0.0;
                c.nesterov = true;
            }),
            Err("nesterov")
        );
        assert_eq!(sgd(|_| {}), Ok(()));
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let make = || Var::new(&[0.5f32, -1.5, 2.5, 0.25], &Device::Cpu).unwrap();
        let loss = |v: &Var| {
            (v.as_tensor().sqr().unwrap() * 3.0)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let a = make();
        let mut opt_a =
            AdamW::named(vec![("w".into(), a.clone())], AdamWConfig::default()).unwrap();
        for _ in 0..5 {
            opt_a.update(&loss(&a).backward().unwrap()).unwrap();
        }
        // Copy out the state mid-way into a fresh optimizer over a copy of the weights.
        let b = Var::from_tensor(&a.as_tensor().copy().unwrap()).unwrap();
        let mut opt_b =
            AdamW::named(vec![("w".into(), b.clone())], AdamWConfig::default()).unwrap();
        opt_b
            .load_state(opt_a.steps(), &opt_a.state_tensors().unwrap())
            .unwrap();
        for _ in 0..5 {
            opt_a.update(&loss(&a).backward().unwrap()).unwrap();
            opt_b.update(&loss(&b).backward().unwrap()).unwrap();
        }
        let bits = |v: &Var| {
            v.as_tensor()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&a), bits(&b));
        let missing = opt_b.load_state(1, &BTreeMap::new()).unwrap_err();
        assert_eq!(missing, "optimizer state `exp_avg.w` is missing");
        let wrong: BTreeMap<String, Tensor> = opt_a
            .state_tensors()
            .unwrap()
            .into_keys()
            .map(|k| {
                (
                    k,
                    Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
                )
            })
            .collect();
        assert!(
            opt_b
                .load_state(1, &wrong)
                .unwrap_err()
                .contains("is F32 [3], the parameter F32 [4]")
        );
    }
}
