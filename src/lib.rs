//! prepuller: pre-pulls a declared list of images through the node's container runtime (CRI).

pub mod reference;
