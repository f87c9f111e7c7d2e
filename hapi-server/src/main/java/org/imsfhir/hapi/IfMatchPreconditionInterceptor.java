package org.imsfhir.hapi;

import ca.uhn.fhir.interceptor.api.Hook;
import ca.uhn.fhir.interceptor.api.Interceptor;
import ca.uhn.fhir.interceptor.api.Pointcut;
import ca.uhn.fhir.rest.api.Constants;
import ca.uhn.fhir.rest.api.RestOperationTypeEnum;
import ca.uhn.fhir.rest.api.server.RequestDetails;
import ca.uhn.fhir.rest.server.exceptions.BaseServerResponseException;
import ca.uhn.fhir.rest.server.exceptions.PreconditionFailedException;
import ca.uhn.fhir.rest.server.exceptions.ResourceVersionConflictException;

/**
 * Answers a failed {@code If-Match} on update/patch with 412 Precondition Failed.
 *
 * <p>FHIR R4 (http.html#concurrency) says a version mismatch in {@code If-Match} gives 412;
 * HAPI's JPA server reports it as a generic version conflict, 409 (error HAPI-0989). Only that
 * case is rewritten: a request with an {@code If-Match} header whose update hit HAPI-0989.
 * Every other 409 (e.g. concurrent writers, conditional-create races) stays 409. The
 * OperationOutcome of the original error is kept.
 */
@Interceptor
public class IfMatchPreconditionInterceptor {

	private static final String STALE_VERSION_CODE = "HAPI-0989";

	@Hook(Pointcut.SERVER_PRE_PROCESS_OUTGOING_EXCEPTION)
	public BaseServerResponseException translate(RequestDetails request, Throwable exception) {
		if (!(exception instanceof ResourceVersionConflictException conflict)) {
			return null;
		}
		RestOperationTypeEnum operation = request.getRestOperationType();
		boolean isWrite = operation == RestOperationTypeEnum.UPDATE || operation == RestOperationTypeEnum.PATCH;
		String ifMatch = request.getHeader(Constants.HEADER_IF_MATCH);
		String message = conflict.getMessage();
		if (!isWrite || ifMatch == null || ifMatch.isBlank() || message == null
				|| !message.contains(STALE_VERSION_CODE)) {
			return null;
		}
		return new PreconditionFailedException(message, conflict.getOperationOutcome());
	}
}
