pub(crate) mod ckpt;
pub(crate) mod spec;
