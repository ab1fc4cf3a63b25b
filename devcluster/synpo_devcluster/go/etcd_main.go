// Command etcd is the upstream etcd server entry point (same as etcd's own
// main.go), built from go.etcd.io/etcd/server/v3 at the version that
// k8s.io/kubernetes pins.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
