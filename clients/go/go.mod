module pillion

go 1.19
