//go:build tools

// Package helm pins the Helm CLI used to lint and render charts/stagecoach in tests.
// Nothing here is compiled into Stagecoach. Build the binary with:
//
//	CGO_ENABLED=0 go build -o <dir>/helm helm.sh/helm/v3/cmd/helm
//
// helm v3.19.x is built against k8s.io v0.34.x, matching the control plane in ../go.mod.
package helm

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
