//! candle tensors to and from keel-ckpt's owned tensors, bit for bit.

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use keel_ckpt::Dtype;

fn bytes<T: candle_core::WithDType, const N: usize>(
    t: &Tensor,
    to_le: fn(T) -> [u8; N],
) -> candle_core::Result<Vec<u8>> {
    Ok(t.flatten_all()?
        .to_vec1::<T>()?
        .into_iter()
        .flat_map(to_le)
        .collect())
}

/// A candle tensor (any device) as a checkpoint tensor with the same dtype and bytes.
pub(crate) fn to_ckpt(name: &str, t: &Tensor) -> Result<keel_ckpt::Tensor, crate::TrainError> {
    let t = t.to_device(&Device::Cpu)?;
    let (dtype, data) = match t.dtype() {
        DType::F32 => (Dtype::F32, bytes(&t, f32::to_le_bytes)?),
        DType::F64 => (Dtype::F64, bytes(&t, f64::to_le_bytes)?),
        DType::F16 => (Dtype::F16, bytes(&t, f16::to_le_bytes)?),
        DType::BF16 => (Dtype::BF16, bytes(&t, bf16::to_le_bytes)?),
        DType::U8 => (Dtype::U8, bytes(&t, u8::to_le_bytes)?),
        DType::U32 => (Dtype::I64, {
            // safetensors/PyTorch have no u32 tensors: widen to i64.
            let v = t.flatten_all()?.to_vec1::<u32>()?;
            v.into_iter()
                .flat_map(|x| i64::from(x).to_le_bytes())
                .collect()
        }),
        DType::I64 => (Dtype::I64, bytes(&t, i64::to_le_bytes)?),
        other => {
            return Err(crate::TrainError::Setting(format!(
                "tensor `{name}` has dtype {other:?}, which checkpoints do not store"
            )));
        }
    };
    Ok(keel_ckpt::Tensor::new(
        name,
        dtype,
        t.dims().to_vec(),
        data,
    )?)
}

/// The checkpoint dtype a candle dtype is stored as (`U32` is widened to `I64`).
pub(crate) fn ckpt_dtype(dtype: DType) -> Option<Dtype> {
    Some(match dtype {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::U8 => Dtype::U8,
        DType::U32 | DType::I64 => Dtype::I64,
        _ => return None,
    })
}

/// The first value of a floating-point checkpoint tensor that is NaN or infinite.
pub(crate) fn first_non_finite(t: &keel_ckpt::Tensor) -> Option<f64> {
    let find = |values: Vec<f64>| values.into_iter().find(|v| !v.is_finite());
    match t.dtype {
        Dtype::F32 => find(values(&t.data, |b| f64::from(f32::from_le_bytes(b)))),
        Dtype::F64 => find(values(&t.data, f64::from_le_bytes)),
        Dtype::F16 => find(values(&t.data, |b| f16::from_le_bytes(b).to_f64())),
        Dtype::BF16 => find(values(&t.data, |b| bf16::from_le_bytes(b).to_f64())),
        _ => None,
    }
}

/// A tensor read from a checkpoint, checked before use: its shape's element count (counted
/// with checked arithmetic) fits its bytes, its values are finite; then on `device`.
pub(crate) fn load_tensor(
    name: &str,
    t: &keel_ckpt::Tensor,
    device: &Device,
) -> Result<Tensor, String> {
    let elements = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if elements.and_then(|n| n.checked_mul(t.dtype.size())) != Some(t.data.len()) {
        return Err(format!(
            "tensor `{name}` of shape {:?} does not fit its {} bytes",
            t.shape,
            t.data.len()
        ));
    }
    if let Some(value) = first_non_finite(t) {
        return Err(format!(
            "tensor `{name}` holds {value}: it is not a good state"
        ));
    }
    from_ckpt(t, device).map_err(|e| format!("tensor `{name}`: {e}"))
}

fn values<T, const N: usize>(data: &[u8], from_le: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| from_le(c.try_into().unwrap_or([0; N])))
        .collect()
}

/// A checkpoint tensor as a candle tensor on `device`.
pub(crate) fn from_ckpt(t: &keel_ckpt::Tensor, device: &Device) -> candle_core::Result<Tensor> {
    let shape = t.shape.clone();
    let cpu = match t.dtype {
        Dtype::F32 => Tensor::from_vec(values(&t.data, f32::from_le_bytes), shape, &Device::Cpu),
        Dtype::F64 => Tensor::from_vec(values(&t.data, f64::from_le_bytes), shape, &Device::Cpu),
        Dtype::F16 => Tensor::from_vec(values(&t.data, f16::from_le_bytes), shape, &Device::Cpu),
        Dtype::BF16 => Tensor::from_vec(values(&t.data, bf16::from_le_bytes), shape, &Device::Cpu),
        Dtype::U8 => Tensor::from_vec(t.data.clone(), shape, &Device::Cpu),
        Dtype::I64 => Tensor::from_vec(values(&t.data, i64::from_le_bytes), shape, &Device::Cpu),
        other => candle_core::bail!("checkpoint dtype {other:?} is not loaded by keel-train"),
    }?;
    cpu.to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening issue #13: a checkpoint tensor whose shape overflows when multiplied, or does
    /// not fit its bytes, or holds NaN, is an error before candle sees it.
    #[test]
    fn checkpoint_tensor_with_bad_shape_or_nan_is_refused() {
        let mut t = keel_ckpt::Tensor::from_f32(vec![2], &[1.0, 2.0]).unwrap();
        assert!(load_tensor("w", &t, &Device::Cpu).is_ok());
        t.shape = vec![usize::MAX, 3];
        assert!(
            load_tensor("w", &t, &Device::Cpu)
                .unwrap_err()
                .contains("does not fit its 8 bytes")
        );
        t.shape = vec![3];
        assert!(load_tensor("w", &t, &Device::Cpu).is_err());
        let nan = keel_ckpt::Tensor::from_f32(vec![2], &[1.0, f32::NAN]).unwrap();
        assert_eq!(
            load_tensor("w", &nan, &Device::Cpu).unwrap_err(),
            "tensor `w` holds NaN: it is not a good state"
        );
        assert_eq!(first_non_finite(&nan).map(f64::is_nan), Some(true));
    }

    #[test]
    fn round_trip_is_bit_exact_for_each_dtype() {
        let base = Tensor::new(
            &[[1.5f32, -0.0, f32::MIN_POSITIVE], [3.25, 1e-40, -7.0]],
            &Device::Cpu,
        )
        .unwrap();
        // Every value widened to f64 (exact for each of these dtypes), as bits.
        let bits = |t: &Tensor| -> Vec<u64> {
            let values = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
            values
                .to_vec1::<f64>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
            let t = base.to_dtype(dtype).unwrap();
            let back = from_ckpt(&to_ckpt("t", &t).unwrap(), &Device::Cpu).unwrap();
            assert_eq!(back.dtype(), dtype);
            assert_eq!(back.dims(), [2, 3]);
            assert_eq!(bits(&t), bits(&back));
        }
    }
}
