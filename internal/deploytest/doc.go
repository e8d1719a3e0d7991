// Package deploytest checks the deployable stack: that docker-compose.yaml
// and the Dockerfile refer to things that exist, and that a fleet of worker
// processes survives a killed worker and restarts of NATS and Redis. It
// holds tests only.
package deploytest
