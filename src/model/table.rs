//! One entry of a checkpoint's tensor table: where a tensor's bytes lie in the file. Both
//! containers (safetensors, and `.pth` through [`super::pth`]) produce these.

/// Where one tensor's elements lie in the mapped file.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// The stored dtype as the file names it (`F32`, `BF16`, `torch.HalfStorage` -> `F16`...).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte offset in the file.
    pub offset: usize,
    /// Bytes.
    pub len: usize,
}

impl RawTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}
