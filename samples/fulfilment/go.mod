module fulfilment

go 1.19

require pillion v0.0.0

replace pillion => ../../clients/go
