package server

import (
	"net/http"
	"strings"
	"testing"

	"github.com/hushchat/hush/protocol"
)

// FuzzAuthFromRequest: whatever headers a client sends, the token comes
// from exactly one place and the version check never accepts a client that
// offered only other subprotocols.
func FuzzAuthFromRequest(f *testing.F) {
	f.Add("Bearer v1.abc.def", "hush.v1")
	f.Add("", "hush.v1, hush.auth.v1.abc.def")
	f.Add("Basic dXNlcg==", "hush.v9")
	f.Add("bearer   tok", "")
	f.Fuzz(func(t *testing.T, auth, protos string) {
		req := &http.Request{Header: http.Header{}}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		if protos != "" {
			req.Header.Set("Sec-WebSocket-Protocol", protos)
		}
		token, ok := authFromRequest(req)
		if token != "" {
			scheme, rest, _ := strings.Cut(req.Header.Get("Authorization"), " ")
			fromHeader := strings.EqualFold(scheme, protocol.AuthScheme) && strings.TrimSpace(rest) == token
			fromProto := strings.Contains(protos, protocol.AuthSubprotocolPrefix+token)
			if !fromHeader && !fromProto {
				t.Fatalf("token %q from neither header", token)
			}
		}
		offeredOther, offeredVersion := false, false
		for _, p := range strings.Split(protos, ",") {
			switch p = strings.TrimSpace(p); {
			case p == "":
			case p == protocol.Subprotocol:
				offeredVersion = true
			case strings.HasPrefix(p, protocol.AuthSubprotocolPrefix):
			default:
				offeredOther = true
			}
		}
		if ok != (!offeredOther || offeredVersion) {
			t.Fatalf("version check %v for %q", ok, protos)
		}
	})
}
