"""Typed CRDT documents over pycrdt: kinds, replicas, handles."""
