package telemetry

import (
	"context"
	"errors"
	"testing"
)

// TestSetupFromEnvironment: off unless an endpoint is set, off when
// disabled, and a refused value says which variable.
func TestSetupFromEnvironment(t *testing.T) {
	cases := []struct {
		name    string
		env     map[string]string
		enabled bool
		badVar  string
	}{
		{"nothing set", nil, false, ""},
		{"endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, true, ""},
		{"traces endpoint", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, true, ""},
		{"grpc", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, true, ""},
		{"sdk disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}, false, ""},
		{"exporter none", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}, false, ""},
		{"http/json", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, false, "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{"unknown protocol", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "carrier-pigeon"}, false, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"},
		{"zipkin", map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, false, "OTEL_TRACES_EXPORTER"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := Setup(context.Background(), WithGetenv(func(k string) string { return c.env[k] }))
			var ce *ConfigError
			switch {
			case c.badVar != "":
				if !errors.As(err, &ce) || ce.Variable != c.badVar {
					t.Fatalf("err = %v, want a ConfigError naming %s", err, c.badVar)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			defer func() { _ = p.Shutdown(context.Background()) }()
			if p.Enabled() != c.enabled || (p.TracerProvider() != nil) != c.enabled {
				t.Errorf("enabled = %v, provider %v; want %v", p.Enabled(), p.TracerProvider(), c.enabled)
			}
		})
	}
}
