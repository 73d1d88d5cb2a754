#define _GNU_SOURCE
#include "CAgentSupport.h"

#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

int cagent_enable_credentials(int fd) {
    int on = 1;
    return setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof(on));
}

long cagent_recv_with_credentials(int fd, void *buffer, unsigned long capacity, int flags, unsigned int *uid, unsigned int *gid) {
    struct iovec io = { .iov_base = buffer, .iov_len = capacity };
    union {
        char bytes[CMSG_SPACE(sizeof(struct ucred))];
        struct cmsghdr align;
    } control;
    struct msghdr message;
    memset(&message, 0, sizeof(message));
    message.msg_iov = &io;
    message.msg_iovlen = 1;
    message.msg_control = control.bytes;
    message.msg_controllen = sizeof(control.bytes);
    ssize_t received = recvmsg(fd, &message, flags);
    if (received < 0) return -1;
    *uid = (unsigned int)-1;
    *gid = (unsigned int)-1;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header != NULL; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level == SOL_SOCKET && header->cmsg_type == SCM_CREDENTIALS) {
            struct ucred credentials;
            memcpy(&credentials, CMSG_DATA(header), sizeof(credentials));
            *uid = credentials.uid;
            *gid = credentials.gid;
        }
    }
    return (long)received;
}
