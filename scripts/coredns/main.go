// Command coredns is CoreDNS with only the plugins the test node's Corefile uses
// (scripts/node/up): building every plugin (clouds' SDKs among them) took 4-9 min of a
// cold CI for nothing the node needs.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
)

// The order a server block's plugins run in, as CoreDNS's plugin.cfg orders them.
var directives = []string{"bind", "errors", "cache", "kubernetes"}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
