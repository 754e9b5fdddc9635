pub(crate) mod spec;
