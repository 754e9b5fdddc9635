//! What the trainer trains: any [`Model`] with named parameters, and the multilayer
//! perceptron `keel train` uses by default.

use candle_core::{DType, Device, Tensor, Var};

use crate::rng::TrainRng;

/// A model the trainer can train and checkpoint: a forward pass to logits and its trainable
/// parameters by name. Randomness (dropout, noise) must come from `rng`, the trainer's
/// saved generator, for a resumed run to repeat an uninterrupted one bit for bit.
pub trait Model {
    /// Logits `[batch, classes]` for inputs `[batch, features]`; `train` is false for evaluation.
    fn forward(&self, xs: &Tensor, train: bool, rng: &mut TrainRng) -> candle_core::Result<Tensor>;

    /// The trainable parameters, each with a unique name (the checkpoint's tensor name), in an
    /// order that does not change between runs.
    fn parameters(&self) -> Vec<(String, Var)>;
}

/// Inverted dropout with the trainer's generator: zeroes each value with probability `p` and
/// scales the others by `1 / (1 - p)`.
pub fn dropout(xs: &Tensor, p: f32, rng: &mut TrainRng) -> candle_core::Result<Tensor> {
    if p <= 0.0 {
        return Ok(xs.clone());
    }
    let keep = 1.0 - p;
    let mask: Vec<f32> = rng
        .uniform(xs.elem_count(), 0.0, 1.0)
        .into_iter()
        .map(|u| if u < keep { 1.0 / keep } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
    xs * mask
}

/// A linear layer's parameters initialised as PyTorch's `nn.Linear` does: weight and bias
/// uniform in `±1/sqrt(fan_in)`.
pub fn linear_init(
    fan_in: usize,
    fan_out: usize,
    device: &Device,
    rng: &mut TrainRng,
) -> candle_core::Result<(Var, Var)> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    let weight = Tensor::from_vec(
        rng.uniform(fan_in * fan_out, -bound, bound),
        (fan_out, fan_in),
        &Device::Cpu,
    )?;
    let bias = Tensor::from_vec(rng.uniform(fan_out, -bound, bound), fan_out, &Device::Cpu)?;
    Ok((
        Var::from_tensor(&weight.to_device(device)?.to_dtype(DType::F32)?)?,
        Var::from_tensor(&bias.to_device(device)?)?,
    ))
}

/// The most parameters an [`Mlp`] may have: 2^28, 1 GiB as `f32` (AdamW keeps two moments
/// and a gradient beside each, so training needs about four times that).
pub const MAX_PARAMETERS: usize = 1 << 28;

/// The most layers an [`Mlp`] may have (each is a step of the forward pass).
pub const MAX_LAYERS: usize = 64;

/// Parameters of an MLP with layer `sizes` (weights and biases), or `None` when the count
/// overflows.
pub fn mlp_parameters(sizes: &[usize]) -> Option<usize> {
    sizes.windows(2).try_fold(0usize, |total, w| {
        w[0].checked_mul(w[1])?
            .checked_add(w[1])?
            .checked_add(total)
    })
}

/// Checks an MLP's size before anything is allocated: at most [`MAX_LAYERS`] layers and
/// [`MAX_PARAMETERS`] parameters, counted with checked arithmetic.
pub fn check_mlp_size(sizes: &[usize]) -> Result<(), String> {
    if sizes.len() > MAX_LAYERS + 1 {
        return Err(format!(
            "an MLP of {} layers: keel-train's limit is {MAX_LAYERS}",
            sizes.len() - 1
        ));
    }
    match mlp_parameters(sizes) {
        Some(n) if n <= MAX_PARAMETERS => Ok(()),
        n => Err(format!(
            "an MLP of sizes {sizes:?} has {} parameters ({} as f32); keel-train's limit is \
             {MAX_PARAMETERS} (1 GiB)",
            n.map_or("more than 2^64".to_string(), |n| n.to_string()),
            n.map_or("more than the address space".to_string(), |n| format!(
                "{:.1} GiB",
                n as f64 * 4.0 / f64::from(1u32 << 30)
            ))
        )),
    }
}

/// A multilayer perceptron: linear layers with ReLU (and optional dropout) between them.
/// `Mlp::new(&[784, 256, 10], ..)` is the 784-256-10 MNIST classifier.
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<(Var, Var)>,
    dropout: f32,
}

impl Mlp {
    /// Layers of the given sizes (`sizes[0]` inputs, the last one classes), initialised from
    /// `rng`; `dropout` is applied after each hidden ReLU in training.
    pub fn new(
        sizes: &[usize],
        dropout: f32,
        device: &Device,
        rng: &mut TrainRng,
    ) -> candle_core::Result<Self> {
        if sizes.len() < 2 || sizes.contains(&0) {
            candle_core::bail!("an MLP needs at least two non-zero layer sizes, got {sizes:?}");
        }
        check_mlp_size(sizes).map_err(candle_core::Error::Msg)?;
        let layers = sizes
            .windows(2)
            .map(|w| linear_init(w[0], w[1], device, rng))
            .collect::<candle_core::Result<_>>()?;
        Ok(Mlp { layers, dropout })
    }
}

impl Model for Mlp {
    fn forward(&self, xs: &Tensor, train: bool, rng: &mut TrainRng) -> candle_core::Result<Tensor> {
        let mut h = xs.clone();
        for (i, (weight, bias)) in self.layers.iter().enumerate() {
            h = h.matmul(&weight.t()?)?.broadcast_add(bias)?;
            if i + 1 < self.layers.len() {
                h = h.relu()?;
                if train {
                    h = dropout(&h, self.dropout, rng)?;
                }
            }
        }
        Ok(h)
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, (w, b))| {
                [
                    (format!("linear{i}.weight"), w.clone()),
                    (format!("linear{i}.bias"), b.clone()),
                ]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening issue #13: a hidden layer of 10^9 aborted on allocation; the size is checked
    /// (with checked arithmetic) before anything is allocated.
    #[test]
    fn hidden_size_of_a_billion_is_refused() {
        let mut rng = TrainRng::new(1);
        let err = Mlp::new(&[784, 1_000_000_000, 10], 0.0, &Device::Cpu, &mut rng).unwrap_err();
        assert!(
            err.to_string()
                .contains("has 795000000010 parameters (2961.6 GiB as f32)"),
            "{err}"
        );
        assert_eq!(mlp_parameters(&[usize::MAX, 2]), None);
        assert!(check_mlp_size(&[usize::MAX, usize::MAX]).is_err());
        assert!(check_mlp_size(&[1; 70]).unwrap_err().contains("69 layers"));
        assert_eq!(
            mlp_parameters(&[784, 256, 10]),
            Some(784 * 256 + 256 + 2570)
        );
        assert!(check_mlp_size(&[784, 256, 10]).is_ok());
    }
}
