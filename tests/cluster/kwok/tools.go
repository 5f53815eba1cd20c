//go:build tools

// Package kwok pins kwok, the fake kubelet of the test control plane. It is a module of
// its own because kwok tracks newer Kubernetes libraries than the control plane
// (tests/cluster/go.mod pins k8s.io/kubernetes v1.34), and one module cannot hold both.
package kwok

import _ "sigs.k8s.io/kwok/pkg/kwok/cmd"
