//go:build tools

// Package kube records the commands this module builds, so `go mod tidy` keeps them.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
