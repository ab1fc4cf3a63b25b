//go:build tools

// Package tools pins the Kubernetes control-plane commands that
// `synpo dev-cluster build` compiles. It is never built itself; it only keeps
// `go mod tidy` from dropping the requirements of the commands below.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
