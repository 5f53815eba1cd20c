//go:build tools

// Package cluster pins the control-plane components that `cargo xtask cluster up`
// builds. Nothing here is compiled into Stagecoach; see tools.go's imports and
// xtask/src/cluster.rs for how the binaries are built and started.
package cluster

import (
	_ "go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
)
