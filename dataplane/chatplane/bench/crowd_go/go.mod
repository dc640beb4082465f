module chatplane.dev/crowd

go 1.22

require google.golang.org/protobuf v1.36.5
