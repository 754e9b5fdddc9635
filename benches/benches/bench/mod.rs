pub(crate) mod ckpt;
pub(crate) mod spec;
pub(crate) mod train;
