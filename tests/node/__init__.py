"""Tests on a real single-node Kubernetes cluster (scripts/node/up): real pods from the
image built by scripts/image/build."""
