# Release tier: `make dist` builds dist/sphincter-linux-x64.tar.gz (needs root: debootstrap,
# chroot), then from its binary dist/sphincter-VERSION-1.x86_64.rpm (rpmbuild) and the image
# dist/sphincter-VERSION-oci.tar (no daemon; libraries from the build root).
# The Debian 11 roots are cached in build/roots; `make dist-clean-roots` drops them.
.PHONY: dist dist-lock dist-clean-roots

dist:
	sh packaging/build.sh dist
	sh packaging/rpm/build.sh dist/sphincter-linux-x64.tar.gz dist
	python3 packaging/oci/build.py dist/sphincter-linux-x64.tar.gz dist

# Re-pin packaging/requirements-build.txt (edit the versions in packaging/lock.sh first).
dist-lock:
	sh packaging/lock.sh

dist-clean-roots:
	-umount build/roots/build/proc 2>/dev/null
	rm -rf --one-file-system build/roots
