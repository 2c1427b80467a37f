package server

import (
	"context"
	"crypto/ed25519"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hushchat/hush/keyserver/authtoken"
	"github.com/hushchat/hush/protocol"
)

func TestAuthRefusals(t *testing.T) {
	e := newEnv(t)
	e.dir.set("alice", 1, 2)
	_, otherKey, _ := ed25519.GenerateKey(nil)
	forged, _ := authtoken.Issue(otherKey, authtoken.Claims{Account: "alice", Device: 1, IssuedAt: time.Now(), Expiry: time.Now().Add(time.Hour)})
	tampered := []byte(e.token("alice", 1))
	if i := len(tampered) - 20; tampered[i] == 'A' {
		tampered[i] = 'B'
	} else {
		tampered[i] = 'A'
	}

	cases := []struct {
		name, token string
		status      int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"garbage", "not-a-token", http.StatusUnauthorized},
		{"expired", e.tokenExp("alice", 1, time.Now().Add(-time.Second)), http.StatusUnauthorized},
		{"forged", forged, http.StatusUnauthorized},
		{"tampered", string(tampered), http.StatusUnauthorized},
		{"unknown account", e.token("mallory", 1), http.StatusUnauthorized},
		{"unknown device", e.token("alice", 9), http.StatusUnauthorized},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ws, resp, err := e.dialToken(tc.token, nil)
			if err == nil {
				ws.Close()
				t.Fatal("connection accepted")
			}
			if resp == nil || resp.StatusCode != tc.status {
				t.Fatalf("answer %v, want HTTP %d", resp, tc.status)
			}
		})
	}

	// A removed device's token is refused although it is still unexpired
	// and genuine: that is revocation.
	tok := e.token("alice", 2)
	e.dir.set("alice", 1)
	if ws, resp, err := e.dialToken(tok, nil); err == nil || resp.StatusCode != http.StatusUnauthorized {
		if ws != nil {
			ws.Close()
		}
		t.Fatalf("removed device connected (err %v)", err)
	}

	// The token may also come as a subprotocol (browsers cannot set headers);
	// the relay selects only hush.v1, never echoing the token.
	d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol, protocol.AuthSubprotocolPrefix + e.token("alice", 1)}}
	ws, resp, err := d.Dial(e.url, nil)
	if err != nil {
		t.Fatalf("subprotocol token refused: %v", err)
	}
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != protocol.Subprotocol {
		t.Fatalf("selected subprotocol %q", got)
	}
	ws.Close()

	// A client that speaks only another version is told so.
	d = websocket.Dialer{Subprotocols: []string{"hush.v9"}}
	h := http.Header{"Authorization": {"Bearer " + e.token("alice", 1)}}
	if ws, resp, err := d.Dial(e.url, h); err == nil || resp.StatusCode != http.StatusUpgradeRequired {
		if ws != nil {
			ws.Close()
		}
		t.Fatalf("unsupported version: err %v, resp %v", err, resp)
	}
}

// No frame names a queue: the relay picks it from the token. So device A
// can neither read nor ack device B's envelopes, whatever ids it sends.
func TestTokenChoosesTheQueue(t *testing.T) {
	e := newEnv(t)
	e.dir.set("alice", 1)
	e.dir.set("bob", 1)
	e.dir.set("mallory", 1)
	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")
	var ids []uint64
	for range 3 {
		ack := alice.sendAndAck(sendTo(newClientID(), []byte("for bob"), dev("bob", 1)))
		ids = append(ids, ack.ServerId)
	}
	mallory := e.connect("mallory", 1)
	if envs := mallory.drainUntilEmpty(); len(envs) != 0 {
		t.Fatalf("mallory received %d of bob's envelopes", len(envs))
	}
	mallory.ack(ids...) // knowing the ids does not help
	mallory.send(&protocol.Frame{Body: &protocol.Frame_Ping{Ping: &protocol.Ping{Nonce: 7}}})
	if p := mallory.nextOf("Pong").GetPong(); p.Nonce != 7 { // the ack was processed before the ping
		t.Fatalf("pong %v", p)
	}
	if n, _ := e.store.Depth(context.Background(), dev("bob", 1)); n != 3 {
		t.Fatalf("mallory's ack deleted bob's envelopes: depth %d, want 3", n)
	}
	bob := e.connect("bob", 1)
	if envs := bob.drainUntilEmpty(); len(envs) != 3 {
		t.Fatalf("bob got %d, want 3", len(envs))
	}
}

func TestSecondConnectionReplacesFirst(t *testing.T) {
	e := newEnv(t)
	e.dir.set("bob", 1)
	e.dir.set("alice", 1)
	first := e.connect("bob", 1)
	first.nextOf("QueueEmpty")
	second := e.connect("bob", 1)
	second.nextOf("QueueEmpty")
	if code := first.waitClosed(); code != protocol.CloseReplaced {
		t.Fatalf("first connection closed with %d, want %d", code, protocol.CloseReplaced)
	}
	// The newer connection is the live one.
	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")
	alice.sendAndAck(sendTo(newClientID(), []byte("hi"), dev("bob", 1)))
	if d := second.nextOf("Deliver"); len(d.GetDeliver().Envelopes) != 1 {
		t.Fatalf("second connection got %v", d)
	}
}

func TestRemovedDeviceIsDisconnected(t *testing.T) {
	e := newEnv(t)
	e.dir.set("bob", 1, 2)
	b2 := e.connect("bob", 2)
	b2.nextOf("QueueEmpty")
	e.dir.set("bob", 1)
	e.relay.DeviceChanged("bob")
	if code := b2.waitClosed(); code != protocol.CloseRevoked {
		t.Fatalf("closed with %d, want %d", code, protocol.CloseRevoked)
	}
}

func TestTokenExpiryClosesConnection(t *testing.T) {
	e := newEnv(t)
	e.dir.set("bob", 1)
	ws, _, err := e.dialToken(e.tokenExp("bob", 1, time.Now().Add(1500*time.Millisecond)), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, ws, dev("bob", 1))
	c.nextOf("QueueEmpty")
	if code := c.waitClosed(); code != protocol.CloseTokenExpired {
		t.Fatalf("closed with %d, want %d", code, protocol.CloseTokenExpired)
	}
}
