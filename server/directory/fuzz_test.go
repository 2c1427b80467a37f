package directory

import (
	"testing"

	"github.com/hushchat/hush/keyserver/ksapi"
	"github.com/hushchat/hush/protocol"
)

// FuzzParseDeviceList: whatever the key server (or something posing as it)
// answers, the relay gets either an error or valid device ids.
func FuzzParseDeviceList(f *testing.F) {
	b, _ := ksapi.Marshal(&protocol.DeviceList{Account: "alice", Devices: []*protocol.DeviceEntry{{DeviceId: 1}, {DeviceId: 7}}})
	f.Add(b)
	f.Add([]byte(`{"account":"x","devices":[]}`))
	f.Add([]byte(`{"devices":[{"device_id":128}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		ids, err := parseDeviceList("alice", body)
		if err != nil {
			return
		}
		if len(ids) == 0 {
			t.Fatal("no error and no devices")
		}
		for _, id := range ids {
			if protocol.ValidateDeviceID(id) != nil {
				t.Fatalf("invalid id %d accepted", id)
			}
		}
	})
}
