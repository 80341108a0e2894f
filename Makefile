# One command to see doka work, one to test it. Both install and start what they need.
.PHONY: demo test image stack stack-down lint

demo:
	scripts/demo.sh

test:
	scripts/test.sh

# The container image from deploy/Dockerfile, built with buildah (no Docker engine, no registry).
image:
	scripts/image.sh

stack:
	scripts/stack.sh up

stack-down:
	scripts/stack.sh down

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
