module github.com/upm-project/upm

go 1.26
