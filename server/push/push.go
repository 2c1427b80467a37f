// Package push wakes offline devices: when the relay queues an envelope for
// a device that has no connection, it asks a Notifier to tell the device
// "you have mail", and the device connects and drains its queue.
//
// The push is content-free. It carries no sender, no id, no count — nothing
// a push provider or anyone on the path could learn from — so the only way
// to read a message is still the device's own authenticated connection.
//
// Webhook is the one implementation, in the UnifiedPush style: a device
// registers an http(s) endpoint (PushRegister frame), and the relay POSTs a
// fixed body to it. Endpoints are capability URLs, so they are stored but
// never logged (logs show only the host). Because the relay makes requests
// to URLs its clients chose, it refuses loopback, private, link-local and
// other internal addresses unless the operator allows them — both when the
// endpoint is registered and, against DNS rebinding, at every connection it
// dials — and it follows no redirects and uses no proxy.
//
// De-duplication: a device has at most one push pending between two of its
// connections. The first envelope queued while it is offline triggers a
// push; the next ones do not, until the device connects (Reset). Failed
// deliveries are retried with exponential backoff; an endpoint that answers
// 404 or 410 is gone and is deleted.
package push

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"

	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/queue"
)

// Notifier wakes offline devices. Implementations are safe for concurrent
// use and never block the caller on the network.
//
// Guarantees:
//   - Notify returns at once; at most one push per device is pending or
//     delivered between two Resets of that device.
//   - Register validates the endpoint and stores it durably; an empty
//     endpoint removes the registration.
//   - After Close, Notify does nothing and pending retries are dropped.
type Notifier interface {
	Register(ctx context.Context, dev queue.Device, endpoint string) error
	Notify(dev queue.Device)
	Reset(dev queue.Device)
	Close() error
}

// ErrInvalidEndpoint is wrapped by Register for an endpoint it refuses.
var ErrInvalidEndpoint = errors.New("invalid push endpoint")

// ValidateEndpoint checks a push endpoint: an absolute http or https URL of
// at most protocol.MaxPushEndpointLen bytes, without credentials, and —
// unless allowPrivate — not naming localhost or an internal IP address.
// (Host names are checked again at dial time, where they resolve.)
func ValidateEndpoint(raw string, allowPrivate bool) (*url.URL, error) {
	if len(raw) > protocol.MaxPushEndpointLen {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrInvalidEndpoint, protocol.MaxPushEndpointLen)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: not a URL", ErrInvalidEndpoint)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%w: scheme must be http or https", ErrInvalidEndpoint)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("%w: no host", ErrInvalidEndpoint)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%w: credentials in the URL are not allowed", ErrInvalidEndpoint)
	}
	if allowPrivate {
		return u, nil
	}
	host := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return nil, fmt.Errorf("%w: %s is a local address", ErrInvalidEndpoint, host)
	}
	if ip, err := netip.ParseAddr(host); err == nil && Internal(ip) {
		return nil, fmt.Errorf("%w: %s is an internal address", ErrInvalidEndpoint, ip)
	}
	return u, nil
}

var internalPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),   // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, broadcast
	netip.MustParsePrefix("64:ff9b:1::/48"),  // local-use NAT64
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("fec0::/10"),       // deprecated site-local
	netip.MustParsePrefix("::ffff:0:0/96"),   // mapped (checked after Unmap)
	netip.MustParsePrefix("100::/64"),        // discard-only
	netip.MustParsePrefix("2002::/16"),       // 6to4 can wrap any IPv4 address
	netip.MustParsePrefix("64:ff9b::/96"),    // NAT64 can wrap any IPv4 address
	netip.MustParsePrefix("2001::/32"),       // Teredo
	netip.MustParsePrefix("169.254.0.0/16"),  // link-local (also below)
	netip.MustParsePrefix("192.88.99.0/24"),  // 6to4 relay anycast
	netip.MustParsePrefix("198.51.100.0/24"), // documentation
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation
}

// Internal reports whether ip is an address a push must never be sent to:
// loopback, private, link-local, multicast, unspecified, or another
// special-purpose range (including IPv6 forms that can embed any IPv4
// address).
func Internal(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !ip.IsValid() || ip.IsLoopback() || ip.IsPrivate() || ip.IsUnspecified() ||
		ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsInterfaceLocalMulticast() ||
		ip.IsMulticast() {
		return true
	}
	for _, p := range internalPrefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
