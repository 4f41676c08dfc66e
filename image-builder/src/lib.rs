//! Boot media builder.
